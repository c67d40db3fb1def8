"""Our models against DeepCTR-Torch's on one prepared dataset (``jobs/bench_quality.py``,
``make benchmark-quality``).

Every model trains on the same train/valid/test samples (the same targets, negatives and histories) with the
same budget, over several seeds:

- ``dien``, ``din``, ``base``: ours, through the Ray Train path that ``jobs/train.py`` runs (``TrainJob`` and
  ``run_training``, ``workers`` workers sharing the global batch), with the library's default settings;
- ``dien_fit``: our DIEN through the single-process ``fit`` with the same settings: both paths should agree
  within the seeds' spread;
- ``deepctr_dien``, ``deepctr_din``: DeepCTR-Torch's (``dien.bench.peers``).

Budgets: ``fixed`` trains every model ``epochs`` epochs and tests the last weights; ``best`` trains every model
up to ``max_epochs`` with early stopping on validation AUC (``patience``) and tests its best epoch's weights.
The report (``quality.json``: every run and the per-model mean ± std) is written after every run, and a re-run
with the same settings skips the runs it already holds.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dien.bench import peers
from dien.bench.runs import Agreement, ModelRuns, Ordering, format_table, summaries
from dien.data.dataset_dir import DatasetDir
from dien.model import MODELS, ModelConfig, build_model
from dien.train.distributed import ClusterConfig, TrainJob, epoch_points, run_training
from dien.train.loop import TrainConfig, fit_and_test

logger = logging.getLogger(__name__)

OURS = ("dien", "din", "base")
FIT = "dien_fit"
MODEL_NAMES = (*OURS, FIT, *peers.PEERS)
BUDGETS = ("fixed", "best")
GOALS = (Ordering("dien", "deepctr_dien", margin=0.01), Ordering("dien", "deepctr_din"), Ordering("dien", "din"),
         Ordering("dien", "base"))
"""Issue 13's goals on real data: DIEN 0.01 above DeepCTR-Torch's DIEN, above its DIN, above our DIN and
BaseModel (each also by more than twice the seeds' standard deviation)."""


@dataclass(frozen=True)
class QualityConfig:
    data: str
    """Prepared dataset directory (e.g. MovieLens through ``jobs/prepare_data.py --protocol sliding``)."""
    out: str = "runs/bench_quality"
    """Report and Ray Train run storage."""
    models: tuple[str, ...] = MODEL_NAMES
    seeds: tuple[int, ...] = (0, 1, 2)
    budget: str = "fixed"
    """fixed: ``epochs`` epochs, last weights; best: up to ``max_epochs``, early stopping, best weights."""
    epochs: int = 2
    max_epochs: int = 10
    patience: int = 2
    batch_size: int = 128
    """Samples per optimizer step (split among the Ray Train workers)."""
    workers: int = 2
    """Ray Train workers of our models."""
    peer_lr: float | None = None
    """The peers' Adam learning rate; None keeps DeepCTR-Torch's default (1e-3)."""

    def __post_init__(self) -> None:
        unknown = set(self.models) - set(MODEL_NAMES)
        if unknown:
            raise ValueError(f"unknown models {sorted(unknown)}; choose from {', '.join(MODEL_NAMES)}")
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; choose one of {', '.join(BUDGETS)}")
        if self.batch_size % self.workers:
            raise ValueError(f"batch size {self.batch_size} does not split evenly among {self.workers} workers")

    def train_config(self, seed: int, workers: int = 1) -> TrainConfig:
        """The library's default training settings with this budget (the batch per worker)."""
        epochs, patience = (self.epochs, None) if self.budget == "fixed" else (self.max_epochs, self.patience)
        return replace(TrainConfig(), epochs=epochs, patience=patience, batch_size=self.batch_size // workers,
                       seed=seed)

    def peer_config(self) -> peers.PeerConfig:
        defaults = ModelConfig(1, 1)
        epochs, patience = (self.epochs, None) if self.budget == "fixed" else (self.max_epochs, self.patience)
        return peers.PeerConfig(embedding_dim=defaults.item_dim, mlp_dims=defaults.mlp_dims, epochs=epochs,
                                patience=patience, batch_size=self.batch_size, lr=self.peer_lr)

    def settings(self) -> dict[str, Any]:
        """What must match for a report's runs to be reused."""
        return {key: value for key, value in asdict(self).items() if key not in ("models", "seeds", "out")}


def _describe(name: str) -> str:
    if name in peers.PEERS:
        return peers.PEERS[name]
    if name == FIT:
        return "ours: DIEN, single-process fit"
    return f"ours: {MODELS[name].description.split(':')[0]}, Ray Train"


def _run_ours(config: QualityConfig, dataset: DatasetDir, name: str, seed: int) -> dict[str, Any]:
    storage = Path(config.out) / "train"
    run_name = f"{name}-{config.budget}-seed{seed}"
    shutil.rmtree(storage / run_name, ignore_errors=True)
    job = TrainJob(data=str(dataset.path), model=name, train=config.train_config(seed, config.workers),
                   cluster=ClusterConfig(workers=config.workers, cpus_per_worker=1.0, storage=str(storage),
                                         run_name=run_name, max_failures=0))
    result = run_training(job)
    if result.error:
        raise RuntimeError(f"{name} seed {seed} failed: {result.error}")
    epochs = epoch_points(job, result)
    metrics = result.metrics
    return {**{key: metrics[f"test_{key}"] for key in ("auc", "auc_se", "gauc", "logloss")},
            "valid_auc": metrics["valid_auc"],
            "samples_per_second": sum(row["samples_per_second"] for row in epochs) / len(epochs),
            "train_seconds": sum(row["epoch_seconds"] for row in epochs), "epochs": int(metrics["epoch"]),
            "best_epoch": metrics.get("best_epoch"), "seed": seed}


def _run_fit(config: QualityConfig, splits: dict, dataset: DatasetDir, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = build_model("dien", ModelConfig(dataset.n_items, dataset.n_cats))
    result, test = fit_and_test(model, splits, config.train_config(seed))
    best = result.epochs[(result.best_epoch or len(result.epochs)) - 1]
    return {**test, "valid_auc": best["valid_auc"], "samples_per_second": result.samples_per_second,
            "train_seconds": result.train_seconds, "epochs": len(result.epochs), "best_epoch": result.best_epoch,
            "seed": seed}


def _load_previous(path: Path, config: QualityConfig) -> dict[str, list[dict]]:
    """Runs of an earlier report with the same settings, by model."""
    if not path.exists():
        return {}
    report = json.loads(path.read_text())
    if report.get("settings") != json.loads(json.dumps(config.settings())):
        logger.info("%s was written with other settings: starting over", path)
        return {}
    return {model["name"]: model["runs"] for model in report["models"]}


def run_benchmark(config: QualityConfig) -> dict[str, Any]:
    """Train and test every (model, seed) not already in the report; returns the report (also written to
    ``<out>/quality.json`` after every run)."""
    if any(name in peers.PEERS for name in config.models) and not peers.available():
        raise RuntimeError("the DeepCTR-Torch peers need the optional extra: pip install -e '.[peers]'")
    dataset = DatasetDir(config.data)
    path = Path(config.out) / "quality.json"
    previous = _load_previous(path, config)
    results = [ModelRuns(name, _describe(name), [run for run in previous.get(name, []) if run["seed"] in config.seeds])
               for name in config.models]
    splits = None
    started = time.perf_counter()

    def report() -> dict[str, Any]:
        return {"settings": config.settings(), "data": str(dataset.path), "counts": dataset.manifest["counts"],
                "source": dataset.manifest["source"], "torch_threads": torch.get_num_threads(),
                "seconds": time.perf_counter() - started, "models": summaries(results)}

    for seed in config.seeds:
        for runs in results:
            if any(run["seed"] == seed for run in runs.runs):
                continue
            logger.info("training %s, seed %d (%s budget)", runs.name, seed, config.budget)
            if runs.name in OURS:
                run = _run_ours(config, dataset, runs.name, seed)
            else:
                splits = splits or {split: dataset.read_split(split) for split in ("train", "valid", "test")}
                run = (_run_fit(config, splits, dataset, seed) if runs.name == FIT else
                       peers.train_peer(runs.name, splits, dataset.n_items, dataset.n_cats, dataset.max_len,
                                        config.peer_config(), seed))
            runs.runs.append(run)
            logger.info("%s seed %d: test auc %.4f (s.e. %.4f), %.0f samples/s", runs.name, seed, run["auc"],
                        run["auc_se"], run["samples_per_second"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report(), indent=2) + "\n")
    return report()


def format_report(report: dict[str, Any]) -> str:
    settings = report["settings"]
    budget = (f"{settings['epochs']} epochs" if settings["budget"] == "fixed" else
              f"up to {settings['max_epochs']} epochs, patience {settings['patience']}")
    return "\n".join([
        format_table(report["models"], GOALS + (Agreement("dien", FIT),)),
        f"{report['data']}: samples {report['counts']}; budget {budget}, batch {settings['batch_size']}, "
        f"{settings['workers']} Ray Train workers; DeepCTR-Torch lr {settings.get('peer_lr') or '1e-3 (its default)'}; "
        f"torch threads {report['torch_threads']}; "
        f"{report['seconds']:.0f} s"])
