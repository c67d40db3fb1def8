"""The dataset and model artifacts a serving benchmark needs, made small when they are missing.

A serving benchmark measures cost, not accuracy: what matters is the model's shape (hidden size, history
length) and realistic histories, so a one-epoch model on a small synthetic dataset serves as well as a
converged one. Artifacts are made with the same library calls as ``jobs/prepare_data.py`` and
``jobs/train.py`` and kept, so a later run reuses them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from dien.artifacts import MANIFEST, verify_artifact
from dien.data.dataset_dir import MANIFEST_FILE
from dien.data.pipeline import PrepareConfig, prepare
from dien.data.readers import SourceConfig
from dien.data.samples import SampleConfig
from dien.data.synthetic import SyntheticConfig
from dien.train.distributed import ClusterConfig, TrainJob, export_artifact, run_training
from dien.train.loop import TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmallModels:
    """How missing benchmark inputs are made."""

    users: int = 4_000
    """Synthetic users of the dataset (the default generator's items, categories and history lengths)."""
    epochs: int = 1
    workers: int = 2
    """Ray Train workers."""
    cpus_per_worker: float = 0.5
    """Logical CPUs per worker; fractional so Ray Data ingest gets CPUs too (DESIGN: the 2-core hang)."""
    seed: int = 0


def ensure_dataset(path: str | Path, spec: SmallModels = SmallModels()) -> Path:
    """``path`` (absolute) if it holds a prepared dataset, else a small synthetic one prepared there."""
    path = Path(path).resolve()
    if (path / MANIFEST_FILE).is_file():
        return path
    logger.info("no dataset at %s: preparing %d synthetic users", path, spec.users)
    world = replace(SyntheticConfig(), n_users=spec.users, seed=spec.seed)
    prepare(PrepareConfig(out=str(path), source=SourceConfig(synthetic=world), samples=SampleConfig(seed=spec.seed)))
    return path


def ensure_artifact(path: str | Path, data: str | Path, hidden: int, spec: SmallModels = SmallModels(),
                    storage: str | Path = "runs/benchmark_qps/train") -> Path:
    """``path`` (absolute) if it holds a verified artifact, else a DIEN of this ``hidden`` size trained there on
    ``data``."""
    # Absolute: Ray Train workers do not run in this process's working directory.
    path, data = Path(path).resolve(), Path(data).resolve()
    if (path / MANIFEST).is_file():
        verify_artifact(path)
        return path
    logger.info("no artifact at %s: training a DIEN with hidden %d for %d epoch(s)", path, hidden, spec.epochs)
    job = TrainJob(
        data=str(data), model="dien", model_options={"hidden": hidden},
        train=TrainConfig(epochs=spec.epochs, seed=spec.seed),
        cluster=ClusterConfig(workers=spec.workers, cpus_per_worker=spec.cpus_per_worker, storage=str(storage),
                              # A new run each time: an old checkpoint under the same name would be resumed.
                              run_name=f"{path.name}-h{hidden}-{time.strftime('%Y%m%d-%H%M%S')}", max_failures=0),
    )
    result = run_training(job)
    if result.error:
        raise RuntimeError(f"training the benchmark model for {path} failed: {result.error}")
    return export_artifact(job, result, path)
