"""Runs of several models over several seeds: their statistics, the table every model benchmark prints, and
the checks of an ordering between two models."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

STATISTICS = ("auc", "auc_se", "gauc", "logloss", "samples_per_second")
"""Per-run values summarized as ``<key>_mean`` and ``<key>_std`` over the seeds."""


@dataclass
class ModelRuns:
    name: str
    description: str
    runs: list[dict] = field(default_factory=list)
    """Per seed: test auc, auc_se, gauc, logloss, train samples/s, ..., and the seed."""

    def stat(self, key: str) -> tuple[float, float]:
        """Mean and sample standard deviation of ``key`` over the seeds (NaN where a run lacks it)."""
        values = np.array([run.get(key, float("nan")) for run in self.runs], dtype=np.float64)
        return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0

    def summary(self) -> dict:
        return {"name": self.name, "description": self.description, "runs": self.runs,
                **{f"{key}_{stat}": value for key in STATISTICS for stat, value in zip(("mean", "std"), self.stat(key))}}


def summaries(results: list[ModelRuns]) -> list[dict]:
    return [r.summary() for r in results if r.runs]


def pool_runs(model_lists: list[list[dict]]) -> list[dict]:
    """Summaries of the runs of several reports pooled per model; a seed run twice is refused."""
    results: dict[str, ModelRuns] = {}
    for models in model_lists:
        for model in models:
            runs = results.setdefault(model["name"], ModelRuns(model["name"], model["description"]))
            duplicate = {run["seed"] for run in runs.runs} & {run["seed"] for run in model["runs"]}
            if duplicate:
                raise ValueError(f"{model['name']}: seed {sorted(duplicate)[0]} appears in two reports")
            runs.runs.extend(model["runs"])
    return summaries(list(results.values()))


@dataclass(frozen=True)
class Ordering:
    """The claim ``better`` beats ``worse`` by more than ``margin`` test AUC, and by more than twice the larger
    of their seed standard deviations."""

    better: str
    worse: str
    margin: float = 0.0

    def check(self, models: dict[str, dict]) -> str | None:
        """The verdict line, or None when either model has no runs."""
        if self.better not in models or self.worse not in models:
            return None
        a, b = models[self.better], models[self.worse]
        gap = a["auc_mean"] - b["auc_mean"]
        bar = max(self.margin, 2 * max(a["auc_std"], b["auc_std"]))
        holds = not math.isnan(gap) and gap > bar
        required = f"max({self.margin:.3f}, 2 x std)" if self.margin else "2 x std"
        return (f"{self.better} > {self.worse}: AUC gap {gap:+.4f} vs {required} {bar:.4f} -> "
                f"{'holds' if holds else 'does NOT hold'}")


@dataclass(frozen=True)
class Agreement:
    """The claim that two models (e.g. one model trained two ways) reach the same test AUC: their gap is within
    twice the larger of their seed standard deviations."""

    first: str
    second: str

    def check(self, models: dict[str, dict]) -> str | None:
        if self.first not in models or self.second not in models:
            return None
        a, b = models[self.first], models[self.second]
        gap = a["auc_mean"] - b["auc_mean"]
        bar = 2 * max(a["auc_std"], b["auc_std"])
        holds = not math.isnan(gap) and abs(gap) <= bar
        return (f"{self.first} = {self.second}: AUC gap {gap:+.4f} vs 2 x std {bar:.4f} -> "
                f"{'agree' if holds else 'DIFFER'}")


def format_table(models: list[dict], orderings: tuple[Ordering | Agreement, ...] = ()) -> str:
    """Models best test AUC first (mean ± std over seeds, the mean AUC standard error of one test set), then
    the verdict of every ordering."""
    lines = [f"{'model':<14} {'description':<40} {'test AUC':>17} {'s.e.':>6} {'test GAUC':>17} {'logloss':>7} "
             f"{'train samples/s':>15}"]
    for m in sorted(models, key=lambda m: -m["auc_mean"]):
        lines.append(f"{m['name']:<14} {m['description'][:40]:<40} {m['auc_mean']:.4f} ± {m['auc_std']:.4f} "
                     f"{m['auc_se_mean']:>6.4f} {m['gauc_mean']:.4f} ± {m['gauc_std']:.4f} {m['logloss_mean']:>7.4f} "
                     f"{m['samples_per_second_mean']:>15.0f}")
    by_name = {m["name"]: m for m in models}
    lines.extend(line for line in (ordering.check(by_name) for ordering in orderings) if line)
    return "\n".join(lines)
