"""Data-parallel training on Ray Train: the per-worker loop and the ``TorchTrainer`` around it.

Every worker streams its shard of the training split from Ray Data, runs the shared
:func:`dien.train.loop.train_step` under DDP, and after every epoch scores its share of the validation
split; the predictions of all workers are gathered so AUC, GAUC and logloss are exact. Rank 0 reports a
checkpoint (model, optimizer, schedule, epoch, step, early-stopping state, job, dataset hash) each epoch and
every ``checkpoint_every_steps``; a restarted or re-run job resumes from the latest one. With
``TrainConfig.patience`` the run stops once validation AUC stops improving and its last checkpoint holds the
best epoch's weights.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from dien.cluster import connect
from dien.data.batch import Batch, collate
from dien.data.dataset_dir import MANIFEST_FILE, DatasetDir
from dien.model import CTRModel, ModelConfig, build_model, resolve_config
from dien.train.loop import BestEpoch, Predictions, TrainConfig, make_optimizer, predict, train_step

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "state.pt"
FAIL_AT_STEP_ENV = "DIEN_TEST_FAIL_AT_STEP"
"""Test-only: the rank-1 worker (rank 0 with one worker) raises once when it reaches this global step."""


@dataclass(frozen=True)
class ClusterConfig:
    workers: int = 2
    """Ray Train workers (DDP ranks)."""
    cpus_per_worker: float = 1.0
    """Logical CPUs each worker holds; keep some free for Ray Data ingest (DESIGN: the 2-core hang)."""
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
    length_buckets: int = 0
    """Group samples of similar history length into batches, sorting windows of this many batches (0: off)."""
    fail_at_step: int | None = None
    """Test-only failure injection (see FAIL_AT_STEP_ENV)."""

    def with_absolute_paths(self) -> "TrainJob":
        """The job with its paths made absolute: workers do not run in the driver's directory."""
        cluster = replace(self.cluster, storage=str(Path(self.cluster.storage).resolve()))
        return replace(self, data=str(Path(self.data).resolve()), cluster=cluster)

    def model_config(self, dataset: DatasetDir) -> ModelConfig:
        return resolve_config(self.model, ModelConfig(dataset.n_items, dataset.n_cats, **self.model_options))

    def build(self, dataset: DatasetDir) -> CTRModel:
        """The module trained by the workers (a subclass may wrap several models, e.g. distillation)."""
        return build_model(self.model, self.model_config(dataset))

    def exported(self, trained: CTRModel, dataset: DatasetDir) -> tuple[CTRModel, str, ModelConfig]:
        """The model an artifact holds, its registry name and config, from the trained module."""
        return trained, self.model, self.model_config(dataset)


def dataset_sha256(path: str | Path) -> str:
    """Hash of a dataset's manifest: identifies the data a checkpoint or artifact was trained on."""
    return hashlib.sha256((Path(path) / MANIFEST_FILE).read_bytes()).hexdigest()


def length_bucketed(tables: Iterator[pa.Table], batch_size: int, window: int) -> Iterator[pa.Table]:
    """Re-batch ``tables`` so rows of similar history length share a batch: windows of ``window`` batches
    are sorted by length, cut into batches, and emitted in a shuffled order."""
    rng = np.random.default_rng(0)
    pending: list[pa.Table] = []

    def flush() -> Iterator[pa.Table]:
        rows = pa.concat_tables(pending)
        order = np.argsort(pc.list_value_length(rows.column("hist_item")).to_numpy(), kind="stable")
        rows = rows.take(order)
        starts = list(range(0, rows.num_rows, batch_size))
        for start in rng.permutation(starts):
            yield rows.slice(int(start), batch_size)

    for table in tables:
        pending.append(table)
        if sum(t.num_rows for t in pending) >= batch_size * window:
            yield from flush()
            pending = []
    if pending:
        yield from flush()


def _gather(predictions: Predictions) -> Predictions:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return predictions
    parts: list[Predictions] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(parts, predictions)
    return Predictions.concat(parts)


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

    return _gather(predict(model, batches(), device)).metrics()


def _save_state(directory: Path, model: CTRModel, optimizer, scheduler, epoch: int, step_in_epoch: int,
                global_step: int, best: BestEpoch, stopped: bool, job: TrainJob, data_hash: str) -> None:
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
         "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
         "best": best.state_dict(), "stopped": stopped,
         "model_name": job.model, "dataset_sha256": data_hash},
        directory / CHECKPOINT_FILE,
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config["job"]`` is a :class:`TrainJob`."""
    import ray.train
    import ray.train.torch

    job: TrainJob = config["job"]
    # Ray forwards worker stdout/stderr to the driver; give this entry point's progress a handler there.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    dataset = DatasetDir(job.data)
    data_hash = dataset_sha256(job.data)
    torch.manual_seed(job.train.seed)
    model = job.build(dataset)
    optimizer, scheduler = make_optimizer(model, job.train)

    epoch, skip, global_step, resumed_from, stopped = 0, 0, 0, 0, False
    best = BestEpoch(job.train.patience)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        if state["dataset_sha256"] != data_hash:
            raise ValueError(f"the checkpoint of run {job.cluster.run_name!r} was trained on other data than "
                             f"{job.data}; choose another --run-name")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, skip, global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        best.load_state_dict(state["best"])
        stopped = state["stopped"]
        resumed_from = global_step
        logger.info("rank %d resumes at epoch %d, step %d (global step %d)", rank, epoch + 1, skip, global_step)

    model = ray.train.torch.prepare_model(model)
    core: CTRModel = model.module if hasattr(model, "module") else model
    shard = ray.train.get_dataset_shard("train")
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=job.bf16 and device.type == "cuda")

    def report(metrics: dict[str, float], epoch_done: int, step_in_epoch: int) -> None:
        metrics = {**metrics, "resumed_from_step": resumed_from}
        with tempfile.TemporaryDirectory() as directory:
            ckpt = None
            if rank == 0:
                _save_state(Path(directory), core, optimizer, scheduler, epoch_done, step_in_epoch, global_step,
                            best, stopped, job, data_hash)
                ckpt = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=ckpt)

    while epoch < job.train.epochs and not stopped:
        started, samples, losses, load_seconds = time.perf_counter(), 0, [], 0.0
        tables = shard.iter_batches(batch_size=job.train.batch_size, batch_format="pyarrow",
                                    local_shuffle_buffer_size=job.train.batch_size * 8,
                                    local_shuffle_seed=job.train.seed * 1000 + epoch)
        if job.length_buckets:
            tables = length_bucketed(tables, job.train.batch_size, job.length_buckets)
        step_in_epoch = 0
        fetch_started = time.perf_counter()
        for rows in tables:
            step_in_epoch += 1
            if step_in_epoch <= skip:
                fetch_started = time.perf_counter()
                continue
            batch = collate(rows).to(device)
            load_seconds += time.perf_counter() - fetch_started
            global_step += 1
            if job.fail_at_step == global_step and rank == min(1, world - 1) and not _already_failed(job):
                raise RuntimeError(f"injected failure at global step {global_step} ({FAIL_AT_STEP_ENV})")
            with autocast:
                result = train_step(model, batch, optimizer, job.train)
            losses.append(result.loss)
            samples += len(batch)
            every = job.cluster.checkpoint_every_steps
            if every and global_step % every == 0:
                report({"epoch": epoch + 1, "global_step": global_step, "train_loss": float(np.mean(losses))},
                       epoch, step_in_epoch)
            fetch_started = time.perf_counter()
        skip = 0
        scheduler.step()
        elapsed = time.perf_counter() - started
        metrics = {f"valid_{k}": v for k, v in
                   evaluate_split(core, dataset, "valid", rank, world, job.train.eval_batch_size, device).items()}
        metrics.update({
            "epoch": epoch + 1, "global_step": global_step,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "samples_per_second": samples * world / elapsed if elapsed else 0.0,
            "data_seconds": load_seconds, "epoch_seconds": elapsed,
        })
        epoch += 1
        stopped = best.update(core, epoch, metrics)
        if epoch == job.train.epochs or stopped:
            if best.state is not None:
                if stopped and rank == 0:
                    logger.info("early stop after epoch %d: no better validation AUC since epoch %d",
                                epoch, best.epoch)
                best.restore(core)
                metrics.update({k: v for k, v in best.metrics.items() if k.startswith("valid_")},
                               best_epoch=best.epoch)
            metrics.update({f"test_{k}": v for k, v in
                            evaluate_split(core, dataset, "test", rank, world, job.train.eval_batch_size, device).items()})
        if rank == 0:
            logger.info("epoch %d/%d: %s", epoch, job.train.epochs,
                        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        report(metrics, epoch, 0)


def _already_failed(job: TrainJob) -> bool:
    """The injected failure happens once per run: a marker in the run's storage records it."""
    marker = Path(job.cluster.storage) / job.cluster.run_name / ".injected_failure"
    if marker.exists():
        return True
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return False


def run_training(job: TrainJob):
    """Run ``job`` on the connected Ray cluster (or an embedded one) and return Ray Train's ``Result``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    fail_at = os.environ.get(FAIL_AT_STEP_ENV)
    job = replace(job.with_absolute_paths(), fail_at_step=int(fail_at) if fail_at else job.fail_at_step)
    cluster = job.cluster
    dataset = DatasetDir(job.data)
    connect()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=ScalingConfig(num_workers=cluster.workers, use_gpu=cluster.gpu,
                                     resources_per_worker={"CPU": cluster.cpus_per_worker}),
        run_config=RunConfig(
            name=cluster.run_name,
            storage_path=cluster.storage,
            failure_config=FailureConfig(max_failures=cluster.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cluster.keep_checkpoints),
        ),
        datasets={"train": dataset.ray_split("train")},
    )
    return trainer.fit()


def export_artifact(job: TrainJob, result, out: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the model of ``result``'s latest checkpoint as a verified artifact (``dien.artifacts``)."""
    from dien.artifacts import save_artifact

    if result.checkpoint is None:
        raise RuntimeError(f"run {job.cluster.run_name!r} produced no checkpoint to export")
    dataset = DatasetDir(job.data)
    model = job.build(dataset)
    with result.checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    exported, name, config = job.exported(model, dataset)
    vocabularies = dataset.vocabularies()
    metrics = {k: float(v) for k, v in (result.metrics or {}).items()
               if k.startswith(("valid_", "test_")) or k == "best_epoch"}
    return save_artifact(out, exported, name, config, vocabularies.item,
                         vocabularies.category, dataset.max_len, metrics=metrics,
                         dataset_sha256=dataset_sha256(job.data), extra=extra)
