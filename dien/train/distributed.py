"""Data-parallel training on Ray Train: the per-worker run and the ``TorchTrainer`` around it.

A worker's run is a few parts with one job each (:class:`WorkerRun` ties them together):

- ingest: every epoch the worker reads its share of the training split in the seeded global order of
  ``dien.data.epochs`` (a pure function of seed, epoch and world size), a batch ahead of the step;
- step: the shared :func:`dien.train.loop.train_step` under DDP;
- evaluation: after every epoch each rank scores every world-th shard of the validation split and the
  predictions are gathered, so AUC, GAUC and logloss are exact;
- checkpoint: rank 0 reports model, optimizer, schedule, progress within the epoch, early-stopping state and
  the run's identity each epoch and every ``checkpoint_every_steps``.

A restarted worker group or a re-run resumes from the latest checkpoint and skips exactly the batches already
trained. A run is bound to its identity (model, its config, the training settings, the data): re-running a run
name with other settings is refused, naming what differs, before any worker starts. A run that ended after its
last epoch continues when re-run with more epochs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from dien.artifacts import load_artifact
from dien.cluster import connect
from dien.curves import numeric_points
from dien.data.batch import Batch, collate
from dien.data.dataset_dir import MANIFEST_FILE, DatasetDir
from dien.data.epochs import SampleOrder, ShardUnits, read_ahead, sample_checksum
from dien.model import CTRModel, ModelConfig, build_model, resolve_config
from dien.ray_logs import drop_ray_noise
from dien.train.loop import BestEpoch, Predictions, TrainConfig, make_optimizer, predict, train_step
from dien.train.warm_start import check_compatible, warm_start

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
RUN_FILE = "dien_run.json"
"""The run's identity, written next to Ray Train's run state when a run starts."""
CONTINUABLE = ("train.epochs", "train.eval_batch_size")
"""Identity fields a re-run may change: more epochs continue the run."""
FAIL_AT_STEP_ENV = "DIEN_TEST_FAIL_AT_STEP"
"""Test-only: the rank-1 worker (rank 0 with one worker) raises once when it reaches this global step."""
PROGRESS_SECONDS = 30.0
"""Rank 0 logs its progress at the first step and then at least this often."""


@dataclass(frozen=True)
class ClusterConfig:
    workers: int = 2
    """Ray Train workers (DDP ranks)."""
    cpus_per_worker: float = 1.0
    """Logical CPUs each worker holds."""
    gpu: bool = False
    """One GPU per worker, NCCL; CPU workers use gloo."""
    storage: str = "runs/train"
    """Where Ray Train keeps checkpoints and run state (made absolute)."""
    run_name: str = "dien"
    """Re-running with the same storage and name resumes from the latest checkpoint."""
    max_failures: int = 1
    """Worker-group restarts (from the latest checkpoint) before the run fails."""
    checkpoint_every_steps: int = 0
    """Also checkpoint every N optimizer steps (0: only at the end of each epoch)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in storage."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How the workers' bundles are placed on nodes: PACK (as few nodes as fit), SPREAD (across nodes where
    possible; after losing a node the restarted group packs onto what is left), STRICT_PACK, STRICT_SPREAD."""
    address: str | None = None
    """Ray cluster to join (None: RAY_ADDRESS, a GCS address or the dashboard URL, else an embedded Ray)."""


@dataclass(frozen=True)
class TrainJob:
    data: str
    """Prepared dataset directory."""
    model: str = "dien"
    """Registry name of the model."""
    model_options: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields besides the vocabulary sizes (hidden, activation, attention, ...)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    bf16: bool = False
    """bf16 autocast on GPU."""
    fail_at_step: int | None = None
    """Test-only failure injection (see FAIL_AT_STEP_ENV)."""
    init_from: str | None = None
    """A model artifact whose weights the model starts from (``dien.train.warm_start``: embedding rows by
    token); None: a fresh initialization."""

    def with_absolute_paths(self) -> "TrainJob":
        """The job with its paths made absolute: workers do not run in the driver's directory."""
        cluster = replace(self.cluster, storage=str(Path(self.cluster.storage).resolve()))
        init_from = None if self.init_from is None else str(Path(self.init_from).resolve())
        return replace(self, data=str(Path(self.data).resolve()), cluster=cluster, init_from=init_from)

    def model_config(self, dataset: DatasetDir) -> ModelConfig:
        return resolve_config(self.model, ModelConfig(dataset.n_items, dataset.n_cats, **self.model_options))

    def build(self, dataset: DatasetDir) -> CTRModel:
        """The module trained by the workers (a subclass may wrap several models, e.g. distillation)."""
        return build_model(self.model, self.model_config(dataset))

    def exported(self, trained: CTRModel, dataset: DatasetDir) -> tuple[CTRModel, str, ModelConfig]:
        """The model an artifact holds, its registry name and config, from the trained module."""
        return trained, self.model, self.model_config(dataset)

    def identity(self, dataset: DatasetDir) -> dict[str, Any]:
        """What a run is: the trained model, its config, the training settings, the data and the bf16 switch.
        A checkpoint may only continue a run of the same identity (but for ``CONTINUABLE`` fields)."""
        return {"model": self.model, "model_config": self.model_config(dataset).to_dict(),
                "train": asdict(self.train), "bf16": self.bf16, "dataset_sha256": dataset_sha256(dataset.path),
                "init_from": self.init_from}


class RunMismatch(ValueError):
    """A run name re-used with other settings or data than the run it names."""


def identity_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``field: recorded -> current`` for every identity field that differs (nested fields dotted), but
    for the ``CONTINUABLE`` ones."""
    def flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
        return out

    before, after = flat(recorded), flat(current)
    return [f"{key}: {before.get(key, '(unset)')} -> {after.get(key, '(unset)')}"
            for key in sorted(before.keys() | after.keys())
            if key not in CONTINUABLE and before.get(key) != after.get(key)]


def check_same_run(recorded: dict[str, Any], current: dict[str, Any], run_name: str) -> None:
    """Refuse to continue run ``run_name`` with another identity, naming every difference."""
    differences = identity_differences(recorded, current)
    if differences:
        raise RunMismatch(f"run {run_name!r} was started with other settings; refusing to continue it "
                          f"({'; '.join(differences)}). Re-run with the same settings, or choose another --run-name")


def dataset_sha256(path: str | Path) -> str:
    """Hash of a dataset's manifest: identifies the data a checkpoint or artifact was trained on."""
    return hashlib.sha256((Path(path) / MANIFEST_FILE).read_bytes()).hexdigest()


def _gather(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def _broadcast_buffers(model: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (Dice's running statistics drift apart in each rank's last
    training forward), so all ranks evaluate the model that the checkpoint holds."""
    if dist.is_available() and dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def evaluate_split(model: CTRModel, dataset: DatasetDir, split: str, rank: int, world: int,
                   batch_size: int, device: torch.device) -> dict[str, float]:
    """Exact metrics of a whole split: each rank scores every world-th shard, predictions are gathered."""
    _broadcast_buffers(model)
    files = dataset.split_files(split)[rank::world]

    def batches() -> Iterator[Batch]:
        for file in files:
            for rows in pq.ParquetFile(file).iter_batches(batch_size=batch_size):
                yield collate(pa.Table.from_batches([rows]))

    return Predictions.concat(_gather(predict(model, batches(), device))).metrics()


@dataclass
class EpochSums:
    """One rank's running sums over the current epoch: a checkpoint keeps them, so a resumed epoch reports the
    same loss, sample count and sample checksum as an uninterrupted one."""

    loss: float = 0.0
    """Sum of the step losses."""
    samples: int = 0
    checksum: int = 0
    """``sample_checksum`` of the sample ids trained (mod 2**64)."""

    def add(self, loss: float, ids) -> None:
        self.loss += loss
        self.samples += len(ids)
        self.checksum = (self.checksum + sample_checksum(ids)) % 2**64


@dataclass
class Progress:
    """Where a run stands, as a checkpoint records it."""

    epoch: int = 0
    """Epochs completed."""
    step_in_epoch: int = 0
    """Batches of the current epoch trained."""
    global_step: int = 0
    stopped: bool = False
    """Early stopping ended the run."""
    seconds: float = 0.0
    """Training seconds of the current epoch so far (before a restart too)."""


class ProgressLog:
    """Rank 0's progress lines: at the first step, then at least every ``PROGRESS_SECONDS``."""

    def __init__(self, rank: int, world: int, epochs: int, steps: int) -> None:
        self.enabled, self.world, self.epochs, self.steps = rank == 0, world, epochs, steps
        self.last = 0.0

    def step(self, progress: Progress, sums: EpochSums, epoch_started: float, resumed_steps: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (self.last and now - self.last < PROGRESS_SECONDS):
            return
        self.last = now
        steps_per_second = (progress.step_in_epoch - resumed_steps) / max(now - epoch_started, 1e-9)
        batch = sums.samples / max(progress.step_in_epoch, 1)
        logger.info("epoch %d/%d step %d/%d: loss %.4f, %.0f samples/s, epoch ETA %.0f s", progress.epoch + 1,
                    self.epochs, progress.step_in_epoch, self.steps, sums.loss / max(progress.step_in_epoch, 1),
                    steps_per_second * batch * self.world, (self.steps - progress.step_in_epoch) / steps_per_second)


class WorkerRun:
    """One Ray Train worker's part of a run: restore, then per epoch ingest, step, evaluate and checkpoint."""

    def __init__(self, job: TrainJob, rank: int, world: int, device: torch.device) -> None:
        self.job, self.rank, self.world, self.device = job, rank, world, device
        self.dataset = DatasetDir(job.data)
        self.identity = job.identity(self.dataset)
        torch.manual_seed(job.train.seed)
        self.model = job.build(self.dataset)
        if job.init_from is not None:
            vocabularies = self.dataset.vocabularies()
            carried = warm_start(self.model, job.model, job.model_config(self.dataset), load_artifact(job.init_from),
                                 vocabularies.item, vocabularies.category)
            if rank == 0:
                logger.info("warm start from %s: %s", job.init_from, carried)
        self.optimizer, self.scheduler = make_optimizer(self.model, job.train)
        self.order = SampleOrder(ShardUnits(self.dataset.split_files("train")), job.train.order())
        self.progress = Progress()
        self.sums = EpochSums()
        self.best = BestEpoch(job.train.patience)
        self.curve: list[dict[str, float]] = []
        """Every reported point of the run (``dien.curves``), kept in the checkpoint and exported with the model."""
        self.resumed_from = 0
        self.autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                       enabled=job.bf16 and device.type == "cuda")

    def restore(self, directory: Path) -> None:
        """Continue from the checkpoint in ``directory``: refused when it belongs to another run."""
        state = torch.load(directory / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        if "identity" not in state:
            raise RunMismatch(f"the checkpoint of run {self.job.cluster.run_name!r} was written by an earlier version "
                              "that did not record the run's settings; choose another --run-name")
        check_same_run(state["identity"], self.identity, self.job.cluster.run_name)
        if state["progress"]["step_in_epoch"] and state["world"] != self.world:
            raise RunMismatch(f"run {self.job.cluster.run_name!r} stopped mid-epoch with {state['world']} workers; "
                              f"resume it with {state['world']} workers, not {self.world}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        if self.progress.step_in_epoch:
            self.sums = EpochSums(**state["epoch_sums"][self.rank])
        self.best.load_state_dict(state["best"])
        self.curve = state.get("curve", [])
        self.resumed_from = self.progress.global_step
        logger.info("rank %d resumes at epoch %d, step %d (global step %d)", self.rank, self.progress.epoch + 1,
                    self.progress.step_in_epoch, self.progress.global_step)

    def run(self) -> None:
        import ray.train
        import ray.train.torch

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                self.restore(Path(directory))
        if self.progress.stopped and self.rank == 0:
            logger.info("run %r stopped early at epoch %d (best epoch %d): nothing left to train",
                        self.job.cluster.run_name, self.progress.epoch, self.best.epoch)
        self.trained = ray.train.torch.prepare_model(self.model)
        log = ProgressLog(self.rank, self.world, self.job.train.epochs, self.order.steps(self.world))
        while self.progress.epoch < self.job.train.epochs and not self.progress.stopped:
            metrics = self.train_epoch(log)
            self.report(self.finish_epoch(metrics))

    def train_epoch(self, log: ProgressLog) -> dict[str, float]:
        """Train the rest of the current epoch; its training metrics over all ranks."""
        progress, sums, every = self.progress, self.sums, self.job.cluster.checkpoint_every_steps
        plan = self.order.plan(progress.epoch, self.rank, self.world)
        resumed_steps = progress.step_in_epoch
        started, data_seconds = time.perf_counter(), 0.0
        batches = read_ahead((ids, collate(rows)) for ids, rows in
                             zip(plan.batches[resumed_steps:], self.order.read(plan, resumed_steps)))
        fetch_started = time.perf_counter()
        for ids, batch in batches:
            data_seconds += time.perf_counter() - fetch_started
            progress.global_step += 1
            _inject_failure(self.job, self.rank, self.world, progress.global_step)
            result = train_step(self.trained, batch.to(self.device), self.optimizer, self.job.train, self.autocast)
            progress.step_in_epoch += 1
            sums.add(result.loss, ids)
            log.step(progress, sums, started, resumed_steps)
            if every and progress.global_step % every == 0:
                progress.seconds += time.perf_counter() - started
                started = time.perf_counter()
                self.report({"epoch": progress.epoch + 1, "global_step": progress.global_step,
                             "train_loss": sums.loss / progress.step_in_epoch})
            fetch_started = time.perf_counter()
        progress.seconds += time.perf_counter() - started
        self.scheduler.step()
        ranks = _gather(asdict(sums))
        samples, seconds = sum(r["samples"] for r in ranks), progress.seconds
        return {"train_loss": sum(r["loss"] for r in ranks) / (progress.step_in_epoch * self.world),
                "epoch_samples": samples,
                "epoch_sample_checksum": f"{sum(r['checksum'] for r in ranks) % 2**64:016x}",
                "samples_per_second": samples / seconds if seconds else 0.0,
                "data_seconds": data_seconds, "epoch_seconds": seconds}

    def finish_epoch(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Validation, early stopping and, after the last epoch, the test split."""
        job, progress = self.job, self.progress
        metrics = {**{f"valid_{k}": v for k, v in evaluate_split(
            self.model, self.dataset, "valid", self.rank, self.world, job.train.eval_batch_size, self.device).items()},
            **metrics}
        progress.epoch += 1
        progress.step_in_epoch, progress.seconds, self.sums = 0, 0.0, EpochSums()
        metrics.update(epoch=progress.epoch, global_step=progress.global_step)
        progress.stopped = self.best.update(self.model, progress.epoch, metrics)
        if progress.epoch == job.train.epochs or progress.stopped:
            if self.best.state is not None:
                if progress.stopped and self.rank == 0:
                    logger.info("early stop after epoch %d: no better validation AUC since epoch %d",
                                progress.epoch, self.best.epoch)
                self.best.restore(self.model)
                metrics.update({k: v for k, v in self.best.metrics.items() if k.startswith("valid_")},
                               best_epoch=self.best.epoch)
            metrics.update({f"test_{k}": v for k, v in evaluate_split(
                self.model, self.dataset, "test", self.rank, self.world, job.train.eval_batch_size,
                self.device).items()})
        if self.rank == 0:
            logger.info("epoch %d/%d: %s", progress.epoch, job.train.epochs,
                        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        return metrics

    def report(self, metrics: dict[str, Any]) -> None:
        """Report ``metrics`` with a checkpoint of the run as it stands (written by rank 0)."""
        import ray.train

        epoch_sums = _gather(asdict(self.sums))
        point = numeric_points([metrics])[0]
        if "epoch" in point and self.progress.step_in_epoch:  # between epochs: a fractional epoch
            point["epoch"] = self.progress.epoch + self.progress.step_in_epoch / self.order.steps(self.world)
        self.curve.append(point)
        with tempfile.TemporaryDirectory() as directory:
            checkpoint = None
            if self.rank == 0:
                torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                            "scheduler": self.scheduler.state_dict(), "progress": asdict(self.progress),
                            "epoch_sums": epoch_sums, "world": self.world, "best": self.best.state_dict(),
                            "identity": self.identity, "curve": self.curve}, Path(directory) / CHECKPOINT_FILE)
                checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({**metrics, "resumed_from_step": self.resumed_from}, checkpoint=checkpoint)


def _inject_failure(job: TrainJob, rank: int, world: int, global_step: int) -> None:
    """Test-only fault injection (the one seam): raise once per run at ``job.fail_at_step`` on rank 1 (or the
    only rank); a marker in the run's storage records that it happened."""
    if job.fail_at_step != global_step or rank != min(1, world - 1):
        return
    marker = Path(job.cluster.storage) / job.cluster.run_name / ".injected_failure"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    raise RuntimeError(f"injected failure at global step {global_step} ({FAIL_AT_STEP_ENV})")


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config["job"]`` is a :class:`TrainJob`."""
    import ray.train
    import ray.train.torch

    # Ray forwards worker stdout/stderr to the driver; give this entry point's progress a handler there.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    drop_ray_noise()
    context = ray.train.get_context()
    WorkerRun(config["job"], context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()).run()


def claim_run(job: TrainJob) -> None:
    """Bind ``job``'s run name to its identity, or refuse it when the name already belongs to a run with
    another identity (before any worker starts, so the refusal is not retried as a worker failure)."""
    record = Path(job.cluster.storage) / job.cluster.run_name / RUN_FILE
    identity = job.identity(DatasetDir(job.data))
    if record.exists():
        check_same_run(json.loads(record.read_text()), json.loads(json.dumps(identity)), job.cluster.run_name)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(identity, indent=2) + "\n")


def run_training(job: TrainJob):
    """Run ``job`` on the connected Ray cluster (or an embedded one) and return Ray Train's ``Result``.

    Raises :class:`RunMismatch` when the run name belongs to a run of other settings or data.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fail_at = os.environ.get(FAIL_AT_STEP_ENV)
    job = replace(job.with_absolute_paths(), fail_at_step=int(fail_at) if fail_at else job.fail_at_step)
    cluster = job.cluster
    if job.train.patience is not None and not DatasetDir(job.data).manifest["counts"].get("valid"):
        raise ValueError(f"early stopping (patience {job.train.patience}) needs validation samples, and {job.data} "
                         "has none: prepare it with a validation split, or train with --patience none")
    if job.init_from is not None:  # refused here, before workers start, not retried as a worker failure
        check_compatible(load_artifact(job.init_from), job.model, job.model_config(DatasetDir(job.data)))
    claim_run(job)
    connect(cluster.address)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=cluster.workers, use_gpu=cluster.gpu,
                                     resources_per_worker={"CPU": cluster.cpus_per_worker},
                                     placement_strategy=cluster.placement_strategy),
        run_config=RunConfig(
            name=cluster.run_name,
            storage_path=cluster.storage,
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cluster.keep_checkpoints),
        ),
    )
    return trainer.fit()


def _final_state(job: TrainJob, result) -> dict[str, Any]:
    if result.checkpoint is None:
        raise RuntimeError(f"run {job.cluster.run_name!r} produced no checkpoint")
    with result.checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def epoch_points(job: TrainJob, result) -> list[dict[str, float]]:
    """Every epoch's reported metrics (``epoch_seconds``, ``samples_per_second``, validation ...), from the run's
    training curve. (``result.metrics_dataframe`` holds only the kept checkpoints' reports.)"""
    return [point for point in _final_state(job, result).get("curve", []) if "epoch_seconds" in point]


def export_artifact(job: TrainJob, result, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the model of ``result``'s latest checkpoint as a verified artifact (``dien.artifacts``); a warm
    start's artifact names its parent (name, version, path) in ``extra``."""
    from dien.artifacts import save_artifact, verify_artifact

    if job.init_from is not None:
        parent = verify_artifact(job.init_from)
        extra = {"parent": {"name": parent["model"]["name"], "version": parent["version"],
                            "path": str(Path(job.init_from).resolve())}, **(extra or {})}
    dataset = DatasetDir(job.data)
    model = job.build(dataset)
    state = _final_state(job, result)
    model.load_state_dict(state["model"])
    curve = state.get("curve")
    exported, name, config = job.exported(model, dataset)
    vocabularies = dataset.vocabularies()
    metrics = {k: float(v) for k, v in (result.metrics or {}).items()
               if k.startswith(("valid_", "test_")) or k == "best_epoch"}
    return save_artifact(out, exported, name, config, vocabularies.item,
                         vocabularies.category, dataset.max_len, metrics=metrics,
                         dataset_sha256=dataset_sha256(job.data), extra=extra,
                         item_categories=vocabularies.item_category, curves=curve)
