"""The application builder: ``import_path: dien.serve.app:build_app`` in ``serve_configs/*.yaml``.

    serve run serve_configs/local.yaml
    serve run dien.serve.app:build_app model=artifacts/student history=data/synthetic
    serve run dien.serve.app:build_app model=artifacts/student history=data/synthetic scoring=in_ingress

Several versions side by side (``model: {label: directory}``) and the routing between them:
``serve_configs/rollout.yaml``.
"""
# No `from __future__ import annotations`: Serve converts the config's `args` dict into ServeArgs only when
# the builder's parameter annotation is the class itself, not a string.
from ray.serve import Application

from dien.artifacts import load_artifact
from dien.serve.config import ServeArgs
from dien.serve.ingress import Ingress
from dien.serve.scorer import Scorer, scorer_name


def build_app(args: ServeArgs) -> Application:
    """Ingress -> a Scorer deployment per version of ``args.model`` (``scoring: separate``), or the Ingress alone
    (``scoring: in_ingress``). Loads nothing here: the builder may run on another machine than the replicas, so
    paths are resolved and checked by the replicas that read them."""
    args = ServeArgs.model_validate(args)
    if args.scoring == "in_ingress":
        return Ingress.bind(None, args)
    scorers = {label: Scorer.options(name=scorer_name(label)).bind(path, args.device, load_artifact,
                                                                   args.category_conflict, label)
               for label, path in args.versions().items()}
    return Ingress.bind(scorers, args)
