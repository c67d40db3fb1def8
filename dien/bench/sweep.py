"""Settings sweeps: train one model per trial with the single-process ``fit`` and keep its validation and test
metrics (``jobs/sweep.py``). Trials run in parallel processes with one torch thread each, so the numbers of a
trial do not depend on how many ran beside it; the library's defaults were chosen with this on the validation
splits (README: choosing the defaults).

A trial is a JSON object: ``{"model": "dien", "model_options": {...}, "train_options": {...}, "seed": 0}``, the
options being ``ModelConfig`` and ``TrainConfig`` fields over the library's defaults.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dien.data.dataset_dir import DatasetDir
from dien.data.local import build_local_dataset
from dien.data.samples import SampleConfig
from dien.data.synthetic import SyntheticConfig, generate
from dien.model import ModelConfig, build_model
from dien.train.loop import TrainConfig, fit_and_test

logger = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
"""The data name of the default synthetic data (paper protocol), generated in each trial's process."""


@dataclass(frozen=True)
class Trial:
    model: str = "dien"
    model_options: dict[str, Any] = field(default_factory=dict)
    train_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def label(self) -> str:
        options = {**self.model_options, **self.train_options}
        return f"{self.model} " + (" ".join(f"{k}={v}" for k, v in sorted(options.items())) or "(defaults)")


def _splits(data: str) -> tuple[dict, int, int]:
    if data == SYNTHETIC:
        dataset = build_local_dataset(generate(SyntheticConfig()), SampleConfig())
        return dataset.splits, dataset.n_items, dataset.n_cats
    directory = DatasetDir(data)
    return {split: directory.read_split(split) for split in ("train", "valid", "test")}, directory.n_items, directory.n_cats


def run_trial(data: str, trial: Trial) -> dict[str, Any]:
    """Train and test ``trial`` in this process (one torch thread)."""
    torch.set_num_threads(1)
    splits, n_items, n_cats = _splits(data)
    torch.manual_seed(trial.seed)
    model = build_model(trial.model, ModelConfig(n_items, n_cats, **trial.model_options))
    config = replace(TrainConfig(), **{**trial.train_options, "seed": trial.seed})
    started = time.perf_counter()
    result, test = fit_and_test(model, splits, config)
    valid = [epoch["valid_auc"] for epoch in result.epochs]
    return {"trial": asdict(trial), "label": trial.label(), "valid_auc_per_epoch": valid,
            "valid_auc": valid[(result.best_epoch or len(valid)) - 1], "best_epoch": result.best_epoch,
            "test_auc": test["auc"], "test_auc_se": test["auc_se"], "samples_per_second": result.samples_per_second,
            "seconds": time.perf_counter() - started}


def run_sweep(data: str, trials: list[Trial], parallel: int = 2, out: str | Path | None = None) -> list[dict]:
    """Every trial in its own process, ``parallel`` at a time; results in trial order (also written to ``out``
    as each finishes)."""
    results: list[dict | None] = [None] * len(trials)
    pending, running = list(enumerate(trials)), []
    while pending or running:
        while pending and len(running) < parallel:
            index, trial = pending.pop(0)
            command = [sys.executable, "-m", "dien.bench.sweep", data, json.dumps(asdict(trial))]
            running.append((index, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        time.sleep(1.0)
        for index, process in [(i, p) for i, p in running if p.poll() is not None]:
            stdout, stderr = process.communicate()
            running.remove((index, process))
            if process.returncode != 0:
                raise RuntimeError(f"trial {trials[index].label()} failed:\n{stderr[-3000:]}")
            results[index] = json.loads(stdout.strip().splitlines()[-1])
            logger.info("%s seed %d: valid auc %.4f", trials[index].label(), trials[index].seed,
                        results[index]["valid_auc"])
            if out is not None:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                Path(out).write_text(json.dumps({"data": data, "results": [r for r in results if r]}, indent=2) + "\n")
    return results  # type: ignore[return-value]


def format_table(results: list[dict]) -> str:
    """One line per trial setting (seeds pooled), best mean validation AUC first."""
    by_label: dict[str, list[dict]] = {}
    for result in results:
        by_label.setdefault(result["label"], []).append(result)
    rows = sorted(by_label.items(), key=lambda item: -sum(r["valid_auc"] for r in item[1]) / len(item[1]))
    lines = [f"{'valid AUC':>9} {'per seed':<22} {'test AUC':>8}  setting"]
    for label, runs in rows:
        valid = sum(r["valid_auc"] for r in runs) / len(runs)
        test = sum(r["test_auc"] for r in runs) / len(runs)
        seeds = " / ".join(f"{r['valid_auc']:.4f}" for r in runs)
        lines.append(f"{valid:>9.4f} {seeds:<22} {test:>8.4f}  {label}")
    return "\n".join(lines)


def load_trials(path: str | Path) -> list[Trial]:
    """Trials of a JSON-lines file (blank lines and lines starting with # are skipped)."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [Trial(**json.loads(line)) for line in lines]


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run_trial(sys.argv[1], Trial(**json.loads(sys.argv[2])))))
