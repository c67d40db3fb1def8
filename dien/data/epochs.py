"""The order training reads its samples in: every epoch a fresh, seeded, global random order, split across ranks.

A plan is a pure function of (seed, epoch, world size, rank) over the row groups of a split's Parquet shards,
so every rank computes its own share without talking to the others, a resumed run skips exactly the batches
it already trained, and two runs with the same seed see the same batches:

1. the units (row groups of the shards; slices of an in-memory table) are permuted (seeded by seed and epoch) and laid end to end: one sequence of
   every sample;
2. rank r takes the r-th of ``world`` contiguous, equal (within one sample) slices of it;
3. every rank cuts its slice into the same number of batches (``batch_size`` or one less), so DDP ranks step
   together and every sample is trained exactly once per epoch;
4. windows of ``shuffle_window`` samples (a whole number of batches) are shuffled uniformly; a window is read
   into memory at once, so it bounds the memory and is the only limit on randomness. The prepare job writes
   each training shard in random row order and in small row groups, so a window of row groups from random
   places in the data mixes users well beyond its size;
5. optionally (``length_buckets``) groups of that many batches within a window are sorted by history length
   before they are cut, and the window's batches are then put in a random order: padding shrinks, the
   sample set per epoch stays the same.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from queue import Full, Queue
from typing import Iterator, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

T = TypeVar("T")


@dataclass(frozen=True)
class OrderConfig:
    batch_size: int = 128
    """Samples per batch and rank."""
    seed: int = 0
    """With the epoch, decides every permutation."""
    shuffle_window: int = 262_144
    """Samples per rank shuffled together (and held in memory together)."""
    length_buckets: int = 0
    """Sort groups of this many batches by history length before cutting them (0: off)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shuffle_window < 1 or self.length_buckets < 0:
            raise ValueError("need batch_size >= 1, shuffle_window >= 1 and length_buckets >= 0")


@dataclass
class EpochPlan:
    """One rank's batches of one epoch, as global sample ids (positions in the split's shards, read in name
    order), in training order."""

    batches: list[np.ndarray]
    """[steps] arrays of int64 sample ids."""
    window_batches: int
    """Batches per shuffle window: batches [k * window_batches, (k + 1) * window_batches) are read together."""

    @property
    def steps(self) -> int:
        return len(self.batches)

    def sample_ids(self, start: int = 0) -> np.ndarray:
        """Every sample id of batches ``start`` on, in order."""
        rest = self.batches[start:]
        return np.concatenate(rest) if rest else np.zeros(0, np.int64)


class ShardUnits:
    """The row groups of Parquet shards (``files``, in this order) as the units of a :class:`SampleOrder`."""

    def __init__(self, files: list[str]) -> None:
        metadata = {f: pq.ParquetFile(f).metadata for f in files}
        self.units = [(f, g) for f in files for g in range(metadata[f].num_row_groups)
                      if metadata[f].row_group(g).num_rows]
        self.rows = np.array([metadata[f].row_group(g).num_rows for f, g in self.units], dtype=np.int64)

    def read(self, unit: int, columns: list[str] | None = None) -> pa.Table:
        file, group = self.units[unit]
        return pq.ParquetFile(file).read_row_group(group, columns=columns)


class TableUnits:
    """An in-memory sample table cut into units of ``rows`` rows, for single-process training."""

    def __init__(self, table: pa.Table, rows: int = 4096) -> None:
        self.table = table
        starts = np.arange(0, table.num_rows, rows)
        self.starts = starts
        self.rows = np.minimum(rows, table.num_rows - starts).astype(np.int64)

    def read(self, unit: int, columns: list[str] | None = None) -> pa.Table:
        part = self.table.slice(int(self.starts[unit]), int(self.rows[unit]))
        return part.select(columns) if columns else part


class SampleOrder:
    """Plans and reads the batches of one split, whose samples come in ``units`` (:class:`ShardUnits` or
    :class:`TableUnits`)."""

    def __init__(self, units: ShardUnits | TableUnits, config: OrderConfig) -> None:
        if not units.rows.sum():
            raise ValueError("no training samples to read")
        self.source, self.config = units, config
        self.unit_rows = units.rows
        self.unit_starts = np.concatenate([[0], np.cumsum(self.unit_rows)[:-1]]).astype(np.int64)
        self.samples = int(self.unit_rows.sum())
        self._lengths: np.ndarray | None = None

    def history_lengths(self) -> np.ndarray:
        """[samples] int32 history length of every sample (read once, only when length buckets need them)."""
        if self._lengths is None:
            parts = [pc.list_value_length(self.source.read(u, ["hist_item"]).column("hist_item")).to_numpy()
                     for u in range(len(self.unit_rows))]
            self._lengths = np.concatenate(parts).astype(np.int32)
        return self._lengths

    def steps(self, world: int) -> int:
        """Batches per rank and epoch (the same on every rank)."""
        return math.ceil(math.ceil(self.samples / world) / self.config.batch_size)

    def plan(self, epoch: int, rank: int, world: int) -> EpochPlan:
        """Rank ``rank`` of ``world``'s batches in epoch ``epoch`` (0-based)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in a world of {world}")
        config = self.config
        units = np.random.default_rng([config.seed, epoch]).permutation(len(self.unit_rows))
        sequence = np.concatenate([np.arange(s, s + n) for s, n in zip(self.unit_starts[units], self.unit_rows[units])])
        share = sequence[rank * self.samples // world:(rank + 1) * self.samples // world]
        steps = self.steps(world)
        if len(share) < steps:
            raise ValueError(f"{self.samples} training samples cannot fill {steps} batches on each of {world} "
                             "workers; use fewer workers or a smaller batch size")
        sizes = np.full(steps, len(share) // steps, dtype=np.int64)
        sizes[:len(share) % steps] += 1
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        window_batches = max(1, config.shuffle_window // config.batch_size)
        rng = np.random.default_rng([config.seed, epoch, world, rank])
        batches: list[np.ndarray] = []
        for first in range(0, steps, window_batches):
            last = min(first + window_batches, steps)
            rows = share[bounds[first]:bounds[last]][rng.permutation(bounds[last] - bounds[first])]
            window = self._cut(rows, sizes[first:last], rng)
            batches.extend(window[i] for i in (rng.permutation(len(window)) if config.length_buckets else
                                               range(len(window))))
        return EpochPlan(batches, window_batches)

    def _cut(self, rows: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """``rows`` cut into batches of ``sizes``; groups of ``length_buckets`` batches sorted by length first."""
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        group = self.config.length_buckets
        if group:
            lengths = self.history_lengths()
            for first in range(0, len(sizes), group):
                span = slice(bounds[first], bounds[min(first + group, len(sizes))])
                rows[span] = rows[span][np.argsort(lengths[rows[span]], kind="stable")]
        return [rows[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]

    def read(self, plan: EpochPlan, start: int = 0) -> Iterator[pa.Table]:
        """The sample rows of ``plan``'s batches from batch ``start`` on, one table per batch, reading one
        shuffle window at a time."""
        for first in range(start - start % plan.window_batches, plan.steps, plan.window_batches):
            batches = plan.batches[first:first + plan.window_batches]
            ids = np.concatenate(batches)
            unit_of = np.searchsorted(self.unit_starts, ids, side="right") - 1
            touched = np.unique(unit_of)
            # One chunk per column: taking rows from a chunked list column re-concatenates it on every call.
            table = pa.concat_tables([self.source.read(int(u)) for u in touched]).combine_chunks()
            offsets = np.zeros(len(self.unit_rows), dtype=np.int64)
            offsets[touched] = np.concatenate([[0], np.cumsum(self.unit_rows[touched])[:-1]])
            local = offsets[unit_of] + ids - self.unit_starts[unit_of]
            position = 0
            for index, batch in enumerate(batches, start=first):
                if index >= start:
                    yield table.take(pa.array(local[position:position + len(batch)]))
                position += len(batch)


_DONE = object()


def read_ahead(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """``items`` produced by a background thread up to ``depth`` ahead of the consumer, so reading and
    collating overlap the training step (pyarrow and numpy release the GIL). An exception in the producer is
    raised in the consumer; closing the generator stops the producer."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        """Queue ``item`` unless the consumer has stopped; False once it has."""
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as error:  # handed to the consumer, which re-raises it
            put(error)

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def sample_checksum(ids: np.ndarray) -> int:
    """An order-independent 64-bit fingerprint of a multiset of sample ids (a sum of mixed ids), so two runs
    can show they trained the same samples without keeping the ids."""
    x = np.asarray(ids, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return int(np.sum(x ^ (x >> np.uint64(31)), dtype=np.uint64))
