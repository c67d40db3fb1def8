"""What each way of shuffling the training samples costs, and how well it mixes (``jobs/bench_ingest.py``).

One epoch of batches of a prepared dataset's train split is read and collated (no training) by:

- ``local_buffer``: Ray Data streaming with a local shuffle buffer of 8 batches (the Ray Train ingest before the
  global order): over shards written user after user (as the prepare job wrote them before it shuffled the
  training shards) a batch holds a handful of users;
- ``ray_random_shuffle``: Ray Data's full ``random_shuffle`` of the dataset, every epoch;
- ``epoch_order``: the seeded global order of ``dien.data.epochs`` that training uses.

Mixing is the mean number of distinct users in a batch, next to what a uniform random permutation gives.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from dien.data.batch import collate
from dien.data.dataset_dir import DatasetDir
from dien.data.epochs import OrderConfig, SampleOrder, ShardUnits

METHODS = ("local_buffer", "ray_random_shuffle", "epoch_order")


@dataclass
class IngestResult:
    method: str
    seconds: float
    """Wall time of one epoch of reading and collating."""
    samples_per_second: float
    distinct_users_per_batch: float
    uniform_users_per_batch: float
    """The same statistic for a uniform random permutation of the samples."""
    reproducible: bool
    """Two reads with the same seed and epoch give the same batches."""
    fresh_each_epoch: bool
    """Epoch 1 comes in another order than epoch 0."""


def _tables(dataset: DatasetDir, method: str, batch_size: int, seed: int, epoch: int) -> Iterator[pa.Table]:
    if method == "epoch_order":
        order = SampleOrder(ShardUnits(dataset.split_files("train")), OrderConfig(batch_size=batch_size, seed=seed))
        yield from order.read(order.plan(epoch, 0, 1))
        return
    data = dataset.ray_split("train")
    if method == "ray_random_shuffle":
        yield from data.random_shuffle(seed=seed * 1000 + epoch).iter_batches(
            batch_size=batch_size, batch_format="pyarrow")
    elif method == "local_buffer":
        yield from data.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                     local_shuffle_buffer_size=batch_size * 8, local_shuffle_seed=seed * 1000 + epoch)
    else:
        raise ValueError(f"unknown ingest method {method!r}; choose one of {', '.join(METHODS)}")


def _epoch(dataset: DatasetDir, method: str, batch_size: int, seed: int, epoch: int) -> tuple[float, list[np.ndarray]]:
    """(seconds, each batch's users) of one epoch read and collated."""
    started = time.perf_counter()
    users = [collate(table).user.numpy() for table in _tables(dataset, method, batch_size, seed, epoch)]
    return time.perf_counter() - started, users


def measure(dataset: DatasetDir, method: str, batch_size: int = 128, seed: int = 0,
            on_result: Callable[[IngestResult], None] | None = None) -> IngestResult:
    seconds, users = _epoch(dataset, method, batch_size, seed, 0)
    _, again = _epoch(dataset, method, batch_size, seed, 0)
    _, next_epoch = _epoch(dataset, method, batch_size, seed, 1)
    everyone = np.concatenate(users)
    shuffled = np.random.default_rng(seed).permutation(everyone)
    result = IngestResult(
        method=method, seconds=seconds, samples_per_second=len(everyone) / seconds,
        distinct_users_per_batch=float(np.mean([len(np.unique(u)) for u in users])),
        uniform_users_per_batch=float(np.mean([len(np.unique(shuffled[i:i + batch_size]))
                                               for i in range(0, len(shuffled), batch_size)])),
        reproducible=len(users) == len(again) and all(np.array_equal(a, b) for a, b in zip(users, again)),
        fresh_each_epoch=not (len(users) == len(next_epoch) and all(np.array_equal(a, b)
                                                                    for a, b in zip(users, next_epoch))))
    if on_result is not None:
        on_result(result)
    return result


def format_table(results: list[IngestResult]) -> str:
    lines = [f"{'method':<20} {'epoch s':>8} {'samples/s':>10} {'users/batch':>12} {'uniform':>8} "
             f"{'reproducible':>12} {'fresh/epoch':>11}"]
    for r in results:
        lines.append(f"{r.method:<20} {r.seconds:>8.2f} {r.samples_per_second:>10.0f} "
                     f"{r.distinct_users_per_batch:>12.1f} {r.uniform_users_per_batch:>8.1f} "
                     f"{str(r.reproducible):>12} {str(r.fresh_each_epoch):>11}")
    return "\n".join(lines)


def to_dict(results: list[IngestResult]) -> list[dict]:
    return [asdict(r) for r in results]
