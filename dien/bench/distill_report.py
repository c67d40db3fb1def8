"""The distillation report: teacher (hidden 108) vs. distilled student (hidden 32) vs. a student trained from
scratch with the same budget, on one test set; plus what a scored candidate costs each model."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from dien.allocator import retain_freed_memory
from dien.artifacts import load_artifact
from dien.cluster import connect
from dien.data.batch import collate
from dien.data.dataset_dir import DatasetDir
from dien.data.pipeline import PrepareConfig, prepare
from dien.data.readers import SourceConfig
from dien.data.samples import SampleConfig
from dien.bench.compare import CompareConfig
from dien.train.distill import DistillJob
from dien.train.distributed import ClusterConfig, TrainJob, export_artifact, run_training
from dien.train.evaluate import evaluate_artifact
from dien.train.loop import TrainConfig
from dien.bench.scoring_cost import candidates_per_second

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillReportConfig:
    out: str = "runs/distill_report"
    """Working directory: dataset, runs and the three artifacts."""
    data: str | None = None
    """A prepared dataset to use; None prepares the default synthetic data under ``out``."""
    teacher_hidden: int = 108
    student_hidden: int = 32
    hint_weight: float = 0.1
    """lambda; on the default data 0.1 gave a better validation AUC than 1 (0.9547 vs 0.9503)."""
    train: TrainConfig = field(default_factory=lambda: CompareConfig().train)
    """The budget every model gets: the comparison's (early stopping on validation AUC)."""
    workers: int = 2
    requests: int = 16
    """Requests in the scoring-cost measurement."""
    candidates_per_request: int = 100
    scoring_rounds: int = 5
    """Rounds of the scoring-cost measurement, the three models taking turns in each; every model keeps its
    best round, so a busy moment of the machine or the allocator's warm-up does not land on one model only."""


def _train(job: TrainJob, out: Path, extra: dict[str, Any] | None = None) -> Path:
    """Train and export ``job``, or reuse the artifact already at ``out`` (delete it to retrain)."""
    if (out / "manifest.json").exists():
        logger.info("reusing %s", out)
        return out
    result = run_training(job)
    if result.error:
        raise RuntimeError(f"run {job.cluster.run_name} failed: {result.error}")
    return export_artifact(job, result, out, extra=extra)


def run_report(config: DistillReportConfig) -> dict[str, Any]:
    out = Path(config.out)
    connect()
    if config.data is None:
        data = out / "data"
        if not (data / "manifest.json").exists():
            prepare(PrepareConfig(out=str(data), source=SourceConfig(), samples=SampleConfig()))
    else:
        data = Path(config.data)
    dataset = DatasetDir(data)

    def cluster(name: str) -> ClusterConfig:
        return ClusterConfig(workers=config.workers, storage=str(out / "runs"), run_name=name)

    base = TrainJob(data=str(data), model="dien", train=config.train)
    logger.info("training the teacher (hidden %d)", config.teacher_hidden)
    teacher = _train(replace(base, model_options={"hidden": config.teacher_hidden}, cluster=cluster("teacher")),
                     out / "teacher")
    logger.info("distilling the student (hidden %d)", config.student_hidden)
    distill = DistillJob(data=str(data), model="dien", model_options={"hidden": config.student_hidden},
                         train=config.train, cluster=cluster("student"), teacher=str(teacher),
                         hint_weight=config.hint_weight)
    student = _train(distill, out / "student", extra=distill.describe())
    logger.info("training the student from scratch (hidden %d)", config.student_hidden)
    scratch = _train(replace(base, model_options={"hidden": config.student_hidden}, cluster=cluster("scratch")),
                     out / "scratch")

    probe = collate(dataset.read_split("test").slice(0, config.requests))
    # Per-core cost, as a scorer replica with torch_threads=1 and its allocator setting pays it.
    retain_freed_memory()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    artifacts = {role: (path, load_artifact(path)) for role, path in
                 (("teacher", teacher), ("distilled student", student), ("student from scratch", scratch))}
    rates = dict.fromkeys(artifacts, 0.0)
    for _ in range(config.scoring_rounds):
        for role, (_, artifact) in artifacts.items():
            rate = candidates_per_second(artifact.model, probe, config.candidates_per_request)
            rates[role] = max(rates[role], rate)
    torch.set_num_threads(threads)
    rows = [{"role": role, "artifact": str(path), "hidden": artifact.config.hidden,
             **evaluate_artifact(artifact, dataset), "candidates_per_second": rates[role]}
            for role, (path, artifact) in artifacts.items()]
    by_role = {r["role"]: r for r in rows}
    teacher_row, student_row = by_role["teacher"], by_role["distilled student"]
    goals = {
        "student_auc_within_0.005_of_teacher": teacher_row["auc"] - student_row["auc"] <= 0.005,
        "student_beats_scratch": student_row["auc"] > by_role["student from scratch"]["auc"],
        "student_4x_teacher_throughput":
            student_row["candidates_per_second"] >= 4 * teacher_row["candidates_per_second"],
    }
    report = {"config": asdict(config), "data": str(data), "rows": rows, "goals": goals,
              "throughput_ratio": student_row["candidates_per_second"] / teacher_row["candidates_per_second"]}
    (out / "distill_report.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'model':<22} {'hidden':>6} {'test AUC':>9} {'GAUC':>7} {'logloss':>8} {'candidates/s':>13}"]
    for r in report["rows"]:
        lines.append(f"{r['role']:<22} {r['hidden']:>6} {r['auc']:>9.4f} {r['gauc']:>7.4f} {r['logloss']:>8.4f} "
                     f"{r['candidates_per_second']:>13.0f}")
    lines.append(f"student / teacher throughput: {report['throughput_ratio']:.1f}x")
    lines += [f"goal {name}: {'met' if met else 'NOT met'}" for name, met in report["goals"].items()]
    return "\n".join(lines)
