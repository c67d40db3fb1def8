"""The serving benchmark's peers: one plain FastAPI app, served by uvicorn without Ray.

It takes the same ``POST /v1/score`` bodies as the DIEN application (the same request model and limits, the same
user-history store) and scores each request as it arrives, in the worker that parsed it: no proxy, no second
hop, no batching. Two scorers sit behind it:

- ``ours``: our artifact through :func:`dien.serve.scoring.score_jobs`, the scorer deployment's code path (what
  Ray Serve costs, measured against the DIEN application serving the same model);
- ``deepctr_dien``: DeepCTR-Torch's DIEN (AUGRU) at our embedding and MLP widths, called as its ``predict`` does
  (one forward over the candidates, each with the full history), what a team would deploy instead. Its weights
  are untrained: the benchmark measures speed only. It is built without negative sampling, whose auxiliary
  network serving never runs.

    python -m dien.bench.plain_server --scorer ours --model artifacts/student --history data/synthetic --port 8100
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at runtime, and the request
# model is a local class built from the limits.
import argparse
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from fastapi import FastAPI

from dien.data.dataset_dir import DatasetDir
from dien.serve.config import DEFAULT_VERSION, RequestLimits
from dien.serve.history import UserHistoryStore
from dien.serve.schemas import ModelRef, ScoreResponse, item_and_category_lists, score_request_model

SCORERS = ("ours", "deepctr_dien")
CONFIG_ENV = "DIEN_PLAIN_SERVER"
"""The app's :class:`PlainServerConfig` as JSON, for every uvicorn worker process (``create_app`` is a factory)."""


@dataclass(frozen=True)
class PlainServerConfig:
    scorer: str
    """One of :data:`SCORERS`."""
    history: str
    """Prepared dataset directory: the user-history store, and the vocabularies the peer's ids come from."""
    model: str | None = None
    """Our artifact (``scorer: ours``)."""
    limits: RequestLimits = field(default_factory=RequestLimits)
    torch_threads: int = 1


Scorer = Callable[[list[str], list[str | None], list[str | None], list[str | None]], tuple[list[float], str]]
"""(candidate items, candidate categories, history items, history categories) -> (scores, model name)."""


def _ours(config: PlainServerConfig) -> Scorer:
    from dien.artifacts import load_artifact
    from dien.serve.scoring import ModelVocabulary, ScoreJob, score_jobs

    artifact = load_artifact(config.model)
    vocabulary = ModelVocabulary(artifact.items, artifact.categories, artifact.item_categories)

    def score(items, cats, hist_items, hist_cats):
        scored = score_jobs(artifact.model, vocabulary, artifact.max_len, [ScoreJob(items, cats, hist_items,
                                                                                     hist_cats)])
        return scored.scores[0].tolist(), artifact.name

    return score


def _deepctr_dien(config: PlainServerConfig) -> Scorer:
    from deepctr_torch.models import DIEN

    from dien.bench.peers import PeerConfig, feature_columns
    from dien.serve.scoring import TokenIndex

    dataset = DatasetDir(config.history)
    vocab = dataset.vocabularies()
    max_len, peer = dataset.max_len, PeerConfig()
    columns = feature_columns(len(vocab.item), len(vocab.category), max_len, peer.embedding_dim, negatives=False)
    model = DIEN(columns, ["item_id", "cate_id"], gru_type="AUGRU", use_negsampling=False,
                 dnn_hidden_units=peer.mlp_dims, device="cpu").eval()
    items, cats = TokenIndex(vocab.item), TokenIndex(vocab.category)

    def score(candidate_items, candidate_cats, hist_items, hist_cats):
        n = len(candidate_items)
        history = np.zeros((2, max_len), dtype=np.int64)
        kept = slice(max(len(hist_items) - max_len, 0), None)
        length = len(hist_items[kept])
        history[0, :length] = items.encode(hist_items[kept])
        history[1, :length] = cats.encode(hist_cats[kept])
        features = {"item_id": items.encode(candidate_items)[:, None], "cate_id": cats.encode(candidate_cats)[:, None],
                    "hist_item_id": np.tile(history[0], (n, 1)), "hist_cate_id": np.tile(history[1], (n, 1)),
                    "seq_length": np.full((n, 1), length)}
        x = torch.from_numpy(np.concatenate([features[name] for name in model.feature_index], axis=1)).float()
        with torch.no_grad():
            return model(x).reshape(-1).tolist(), "deepctr_dien"

    return score


def create_app(config: PlainServerConfig | None = None) -> FastAPI:
    """The app for ``config`` (default: from the ``DIEN_PLAIN_SERVER`` environment variable)."""
    if config is None:
        raw = json.loads(os.environ[CONFIG_ENV])
        config = PlainServerConfig(**{**raw, "limits": RequestLimits.model_validate(raw["limits"])})
    if config.scorer not in SCORERS:
        raise ValueError(f"unknown scorer {config.scorer!r}; choose one of {', '.join(SCORERS)}")
    torch.set_num_threads(config.torch_threads)
    score = _ours(config) if config.scorer == "ours" else _deepctr_dien(config)
    store = UserHistoryStore.load(config.history)
    max_len = DatasetDir(config.history).max_len
    ScoreRequest = score_request_model(config.limits)
    api = FastAPI(title=f"Plain scoring endpoint ({config.scorer}, no Ray)")

    @api.post("/v1/score", response_model=ScoreResponse, max_body_size=config.limits.max_body_bytes)
    def score_request(body: ScoreRequest) -> ScoreResponse:
        # A sync endpoint: FastAPI runs it in its thread pool, so the event loop keeps accepting meanwhile.
        if body.history is not None:
            hist_items, hist_cats = item_and_category_lists(body.history)
        else:
            hist_items, hist_cats = store.lookup(body.user_id or "") or ([], [])
        items, cats = item_and_category_lists(body.candidates)
        scores, name = score(items, cats, hist_items, hist_cats)
        return ScoreResponse(scores=scores, model=ModelRef(name=name, version="0", label=DEFAULT_VERSION),
                             history_length=min(len(hist_items), max_len))

    @api.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "scorer": config.scorer}

    return api


def serve_forever(config: PlainServerConfig, host: str, port: int, workers: int) -> None:
    """uvicorn with ``workers`` processes, each building the app from ``config``."""
    import uvicorn

    os.environ[CONFIG_ENV] = json.dumps({**asdict(config), "limits": config.limits.model_dump()})
    uvicorn.run("dien.bench.plain_server:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="warning", access_log=False)


class PlainServer:
    """:func:`serve_forever` in a subprocess (one uvicorn worker per CPU), ready when its ``/healthz`` answers;
    :meth:`close` stops it."""

    def __init__(self, config: PlainServerConfig, port: int, workers: int | None = None,
                 timeout_s: float = 120.0) -> None:
        import subprocess
        import sys
        import time

        import requests

        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "dien.bench.plain_server", "--scorer", config.scorer, "--history",
                   config.history, "--port", str(port), "--workers", str(workers or os.cpu_count() or 1),
                   "--torch-threads", str(config.torch_threads)] + (["--model", config.model] if config.model else [])
        self.process = subprocess.Popen(command)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the plain server ({config.scorer}) exited with {self.process.returncode}")
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"the plain server ({config.scorer}) did not answer on {self.url} in {timeout_s} s")
            time.sleep(0.5)

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except Exception:  # noqa: BLE001 -- a server that ignores SIGTERM is killed
            self.process.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scorer", choices=SCORERS, required=True)
    parser.add_argument("--history", required=True, help="prepared dataset directory")
    parser.add_argument("--model", help="our artifact (--scorer ours)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="uvicorn worker processes")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args()
    if args.scorer == "ours" and not args.model:
        parser.error("--scorer ours needs --model")
    serve_forever(PlainServerConfig(args.scorer, args.history, args.model, torch_threads=args.torch_threads),
                  args.host, args.port, args.workers)
