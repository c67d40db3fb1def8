"""Train a model data-parallel with Ray Train on a prepared dataset and export it as an artifact.

    python jobs/train.py --data data/synthetic --model dien --epochs 2 --workers 2 --out artifacts/dien
    ray job submit -- "$PWD/.venv/bin/python" jobs/train.py --data "$PWD/data/synthetic" ...

Each run gets its own name (the model and the start time) unless --run-name names one; re-running with the
same --storage and --run-name resumes from the latest checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import sys

from dien.artifacts import ArtifactError, verify_artifact
from dien.model import MODELS
from dien.train.cli import (add_cluster_arguments, add_model_arguments, add_optimization_arguments, cluster_config,
                            default_run_name, format_summary, model_options, train_config)
from dien.train.distributed import TrainJob, export_artifact, run_training


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset directory (jobs/prepare_data.py)")
    parser.add_argument("--model", default="dien", choices=list(MODELS), help="(default: %(default)s)")
    parser.add_argument("--out", help="artifact directory to export the trained model to")
    parser.add_argument("--init-from", metavar="ARTIFACT",
                        help="start from this artifact's weights (embedding rows carried over by token; the same "
                             "model and config but for the vocabulary sizes); the exported artifact records it as "
                             "its parent")
    add_model_arguments(parser)
    add_optimization_arguments(parser)
    add_cluster_arguments(parser, run_name="dien")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.run_name == parser.get_default("run_name"):
        args.run_name = default_run_name(args.model)  # the model's name, not the job's
    print(f"run {args.run_name!r} in {args.storage} (re-run with --run-name {args.run_name} to resume it)")

    job = TrainJob(
        data=args.data,
        model=args.model,
        model_options=model_options(args),
        train=train_config(args),
        cluster=cluster_config(args),
        bf16=args.bf16,
        init_from=args.init_from,
    )
    try:
        if args.init_from:
            verify_artifact(args.init_from)  # a missing or altered parent fails here, before any worker starts
        result = run_training(job)
    except (FileNotFoundError, ValueError, ArtifactError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.error:
        print(f"training failed: {result.error}", file=sys.stderr)
        return 1
    print(format_summary(result.metrics))
    if args.out:
        print(f"artifact: {export_artifact(job, result, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
