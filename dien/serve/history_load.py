"""Bulk load of user histories into the Redis store with Ray Data, in parallel: a prepared dataset's latest
histories (``user_history.parquet``), or a raw event log read through the prepare job's readers.

A prepared dataset keeps each history's behaviors in order but only the time of the last one, so its
behaviors are all stored at that time (events arriving later, with later timestamps, follow them). A raw log
keeps every behavior's own timestamp; its events are grouped by user (a stable hash of the id, so every
worker agrees), sorted by time, and each user's newest ``max_len`` written.
"""
from __future__ import annotations

import logging
import math
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from dien.data.dataset_dir import USER_HISTORY_FILE, VOCAB_DIR, DatasetDir
from dien.data.events import KEPT
from dien.data.readers import SourceConfig, read_checked_events, read_parquet_files
from dien.data.vocab import VOCAB_FILES, Vocabulary
from dien.serve.config import RedisStoreConfig
from dien.serve.history import BehaviorEvent, tokens_of
from dien.serve.redis_history import RedisHistoryWriter

logger = logging.getLogger(__name__)

COUNTS_SCHEMA = pa.schema([("users", pa.int64()), ("behaviors", pa.int64())])


@dataclass
class LoadConfig:
    """What ``jobs/load_histories.py`` loads where."""

    redis: RedisStoreConfig = field(default_factory=RedisStoreConfig)
    """The store (URL, key prefix, ``max_len``): the same settings as the Serve config's ``history``."""
    dataset: str | None = None
    """A prepared dataset directory whose latest histories to load."""
    source: SourceConfig | None = None
    """A raw event log (the prepare job's sources) whose events to load, instead of ``dataset``."""
    replace: bool = True
    """Each loaded user's history replaces what the store held for them, so a reload is idempotent. False
    appends (a raw log only): events already applied (same user and event id) count once."""
    users_per_write: int = 500
    """Users per Redis round trip (one pipeline of scripts)."""
    groups: int | None = None
    """A raw log's user groups (each sorted and written by one task); None: one per 200k events, at least one
    per CPU."""

    def __post_init__(self) -> None:
        if (self.dataset is None) == (self.source is None):
            raise ValueError("load histories from a prepared dataset or from a raw event log: give exactly one")
        if self.dataset is not None and not self.replace:
            raise ValueError("a prepared dataset's histories replace the stored ones (their behaviors carry no "
                             "event ids of their own to append by); append a raw event log instead")
        if self.users_per_write < 1:
            raise ValueError(f"users_per_write must be positive, got {self.users_per_write}")


@dataclass
class LoadSummary:
    users: int
    behaviors: int
    seconds: float
    events_read: int | None = None
    """A raw log's rows read (kept + filtered + rejected); None for a dataset."""
    events_rejected: int | None = None

    @property
    def behaviors_per_s(self) -> float:
        return self.behaviors / self.seconds if self.seconds > 0 else 0.0


def _write_users(writer: RedisHistoryWriter, histories: dict[str, list[BehaviorEvent]], replace: bool,
                 users_per_write: int) -> pa.Table:
    users = list(histories)
    behaviors = 0
    for start in range(0, len(users), users_per_write):
        behaviors += writer.write({u: histories[u] for u in users[start:start + users_per_write]}, replace)
    return pa.table({"users": [len(users)], "behaviors": [behaviors]}, schema=COUNTS_SCHEMA)


def _write_dataset_rows(batch: pa.Table, tokens: ray.ObjectRef, config: LoadConfig) -> pa.Table:
    """Rows of ``user_history.parquet`` (ids) as tokens into Redis. A task, not an actor pool, so it fuses with
    the read and needs no CPU beyond it (a cluster busy serving may have just one free)."""
    item_tokens, cat_tokens = ray.get(tokens)
    items = batch.column("hist_item").combine_chunks()
    cats = batch.column("hist_cat").combine_chunks()
    items_flat = tokens_of(item_tokens, items.flatten().to_numpy(zero_copy_only=False))
    cats_flat = tokens_of(cat_tokens, cats.flatten().to_numpy(zero_copy_only=False))
    offsets = items.offsets.to_numpy() - items.offsets[0].as_py()
    keep = config.redis.max_len
    histories = {}
    for row, (user_id, timestamp) in enumerate(zip(batch.column("user_id").to_pylist(),
                                                   batch.column("timestamp").to_pylist())):
        start = max(offsets[row], offsets[row + 1] - keep)
        histories[user_id] = [BehaviorEvent(user_id, items_flat[j], float(timestamp), cats_flat[j],
                                            event_id=str(j - offsets[row])) for j in range(start, offsets[row + 1])]
    writer = RedisHistoryWriter(config.redis)
    try:
        return _write_users(writer, histories, True, config.users_per_write)
    finally:
        writer.close()


def _user_group(batch: pa.Table, groups: int) -> pa.Table:
    """Kept events with their user's group (crc32 of the id: the same in every worker, unlike ``hash``)."""
    kept = batch.filter(pc.equal(batch.column("outcome"), KEPT))
    group = [zlib.crc32(u.encode()) % groups for u in kept.column("user_id").to_pylist()]
    return kept.select(["user_id", "item_id", "category", "timestamp", "event_type"]).append_column(
        "group", pa.array(group, pa.int32()))


def _write_group(events: pa.Table, config: LoadConfig) -> pa.Table:
    """One group's users, each its newest ``max_len`` events in time order (read order among equal times)."""
    events = events.append_column("order", pa.array(np.arange(events.num_rows)))
    events = events.sort_by([("user_id", "ascending"), ("timestamp", "ascending"), ("order", "ascending")])
    histories: dict[str, list[BehaviorEvent]] = {}
    for user_id, item, category, timestamp, event_type in zip(*(events.column(c).to_pylist() for c in (
            "user_id", "item_id", "category", "timestamp", "event_type"))):
        histories.setdefault(user_id, []).append(BehaviorEvent(user_id, item, float(timestamp), category, event_type))
    keep = config.redis.max_len
    writer = RedisHistoryWriter(config.redis)
    try:
        return _write_users(writer, {u: h[-keep:] for u, h in histories.items()}, config.replace,
                            config.users_per_write)
    finally:
        writer.close()


def _total(counts: ray.data.Dataset) -> tuple[int, int]:
    table = pa.concat_tables([COUNTS_SCHEMA.empty_table(), *ray.get(counts.to_arrow_refs())])
    return int(pc.sum(table.column("users")).as_py() or 0), int(pc.sum(table.column("behaviors")).as_py() or 0)


def load_histories(config: LoadConfig) -> LoadSummary:
    """Load the configured histories into Redis (checked reachable first); what was written, and how fast."""
    RedisHistoryWriter(config.redis).ping()
    started = time.perf_counter()
    if config.dataset is not None:
        dataset = DatasetDir(config.dataset)
        vocab = dataset.path / VOCAB_DIR
        tokens = ray.put((Vocabulary.load(vocab / VOCAB_FILES["item"]).tokens,
                          Vocabulary.load(vocab / VOCAB_FILES["category"]).tokens))
        file = dataset.path / USER_HISTORY_FILE
        # The history is one file, read as one block: split it so that every CPU writes.
        blocks = max(1, min(2 * int(ray.cluster_resources().get("CPU", 1)),
                            pq.ParquetFile(file).metadata.num_rows // config.users_per_write))
        counts = read_parquet_files([str(file)]).repartition(blocks).map_batches(
            _write_dataset_rows, batch_size=config.users_per_write * 4, batch_format="pyarrow",
            fn_kwargs={"tokens": tokens, "config": config})
        users, behaviors = _total(counts.materialize())
        return LoadSummary(users, behaviors, time.perf_counter() - started)
    checked = read_checked_events(config.source).materialize()
    outcomes = checked.groupby("outcome").count().take_all()
    read = sum(row["count()"] for row in outcomes)
    kept = next((row["count()"] for row in outcomes if row["outcome"] == KEPT), 0)
    rejected = next((row["count()"] for row in outcomes if row["outcome"] == "rejected"), 0)
    groups = config.groups or max(int(ray.cluster_resources().get("CPU", 1)), math.ceil(kept / 200_000))
    logger.info("%d events read, %d kept, %d rejected; writing in %d user groups", read, kept, rejected, groups)
    counts = (checked.map_batches(_user_group, batch_format="pyarrow", fn_kwargs={"groups": groups})
              .groupby("group", num_partitions=min(groups, 16))
              .map_groups(_write_group, batch_format="pyarrow", fn_kwargs={"config": config}))
    users, behaviors = _total(counts.materialize())
    return LoadSummary(users, behaviors, time.perf_counter() - started, events_read=read, events_rejected=rejected)
