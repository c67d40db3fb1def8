"""Train every model of the family on the same data over several seeds and compare them (paper Table 2)."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dien.bench.runs import ModelRuns, Ordering, pool_runs, summaries
from dien.bench.runs import format_table as runs_table
from dien.data.local import LocalDataset, build_local_dataset
from dien.data.samples import SampleConfig
from dien.data.synthetic import SyntheticConfig, generate
from dien.kernels import resolve_backend
from dien.model import MODELS, ModelConfig, build_model
from dien.train.loop import TrainConfig, fit_and_test

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareConfig:
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The generated behavior logs every model is trained on."""
    samples: SampleConfig = field(default_factory=SampleConfig)
    """How targets and histories are cut from the logs."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The library's default training settings: up to 10 epochs, stopped 2 epochs after the best validation AUC
    and tested with that epoch's weights (the models peak after 5-10 epochs on the default data); the seed is
    replaced per run."""
    hidden: int = 36
    """GRU hidden size of the sequence models."""
    history_sum: bool = False
    """True: DIN and DIEN (and its ablations) also feed the sum-pooled history to their MLP, as the official
    code does (``ModelConfig``); False: the papers' inputs."""
    models: tuple[str, ...] = tuple(MODELS)
    """Models to compare, by registry name."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Model-initialization and shuffling seeds; the data stays the same."""


def _run_one(dataset: LocalDataset, config: CompareConfig, name: str, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = build_model(name, ModelConfig(dataset.n_items, dataset.n_cats, hidden=config.hidden,
                                          history_sum=config.history_sum))
    result, test = fit_and_test(model, dataset.splits, TrainConfig(**{**asdict(config.train), "seed": seed}))
    return {**test, "samples_per_second": result.samples_per_second, "train_seconds": result.train_seconds,
            "epochs": len(result.epochs), "best_epoch": result.best_epoch, "seed": seed}


def compare_models(config: CompareConfig, out: str | Path | None = None) -> dict:
    """Generate the data once, train and test every (model, seed); returns a JSON-ready report, also written
    to ``out`` after every run so a long comparison can be followed (and survives an interruption)."""
    started = time.perf_counter()
    events = generate(config.synthetic)
    dataset = build_local_dataset(events, config.samples)
    sizes = {split: table.num_rows for split, table in dataset.splits.items()}
    logger.info("data: %d events, %d items, %d categories, samples %s", events.num_rows,
                dataset.n_items, dataset.n_cats, sizes)
    results = [ModelRuns(name, MODELS[name].description) for name in config.models]

    def report() -> dict:
        return {
            "config": asdict(config),
            "kernel_backend": resolve_backend("cpu"),
            "torch_threads": torch.get_num_threads(),
            "events": events.num_rows,
            "samples": sizes,
            "seconds": time.perf_counter() - started,
            "models": summaries(results),
        }

    for seed in config.seeds:
        for runs in results:
            run = _run_one(dataset, config, runs.name, seed)
            runs.runs.append(run)
            logger.info("seed %d %-10s auc %.4f gauc %.4f logloss %.4f  %.0f samples/s  best epoch %s of %d",
                        seed, runs.name, run["auc"], run["gauc"], run["logloss"], run["samples_per_second"],
                        run["best_epoch"], run["epochs"])
            if out is not None:
                write_report(report(), out)
    return report()


def merge_reports(reports: list[dict]) -> dict:
    """One report from comparisons of the same data and settings run on different seeds (e.g. in parallel
    processes): runs are pooled per model and the statistics recomputed."""
    if not reports:
        raise ValueError("nothing to merge")
    first = reports[0]
    for other in reports[1:]:
        for key in ("synthetic", "samples", "train", "hidden", "history_sum"):
            if other["config"].get(key) != first["config"].get(key):
                raise ValueError(f"cannot merge comparisons with different {key} settings")
    seeds = sorted({seed for report in reports for seed in report["config"]["seeds"]})
    return {**first, "config": {**first["config"], "seeds": seeds},
            "seconds": sum(report["seconds"] for report in reports),
            "models": pool_runs([report["models"] for report in reports])}


PAPER_ORDERING = (Ordering("dien", "din"), Ordering("din", "base"))
"""DIEN > DIN > BaseModel, each gap above twice the seeds' standard deviation."""


def format_table(report: dict) -> str:
    """The report as an aligned text table, best AUC first, with the ordering checks the paper implies."""
    return "\n".join([
        runs_table(report["models"], PAPER_ORDERING),
        f"kernel backend: {report['kernel_backend']}, torch threads: {report['torch_threads']}, "
        f"{report['events']} events, samples {report['samples']}, {report['seconds']:.0f} s"])


def write_report(report: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
