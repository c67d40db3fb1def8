"""Training samples from users' time-ordered behaviors: the two protocols, popularity negatives, splits.

Pure NumPy/Arrow on already-encoded events, so the same code runs inside Ray Data tasks and in-process.
Every random draw of a user comes from a generator seeded by (seed, user id): results do not depend on how
users are grouped into tasks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pyarrow as pa

SAMPLE_SCHEMA = pa.schema(
    [
        ("user", pa.int32()),
        ("hist_item", pa.list_(pa.int32())),
        ("hist_cat", pa.list_(pa.int32())),
        ("neg_hist_item", pa.list_(pa.int32())),
        ("neg_hist_cat", pa.list_(pa.int32())),
        ("target_item", pa.int32()),
        ("target_cat", pa.int32()),
        ("label", pa.int8()),
        ("timestamp", pa.int64()),
    ]
)
HISTORY_SCHEMA = pa.schema(
    [
        ("user", pa.int32()),
        ("hist_item", pa.list_(pa.int32())),
        ("hist_cat", pa.list_(pa.int32())),
        ("timestamp", pa.int64()),
    ]
)
"""A user's latest history: the last ``max_len`` behaviors (oldest first) and the time of the last one."""
SPLITS = ("train", "valid", "test")
Protocol = Literal["paper", "sliding"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)


@dataclass(frozen=True)
class SampleConfig:
    protocol: Protocol = "paper"
    """paper: per user the last behavior vs. one negative, users split into train/valid/test.
    sliding: every behavior after the first ``min_history`` is a target; per user the last
    ``eval_targets`` targets are test, the ``eval_targets`` before them valid, the rest train."""
    max_len: int = 100
    """Keep the last ``max_len`` behaviors of a history."""
    min_history: int = 1
    """A target needs at least this many strictly earlier behaviors."""
    test_fraction: float = 0.1
    """paper protocol: share of users whose samples are test."""
    valid_fraction: float = 0.1
    """paper protocol: share of the remaining (train) users carved out as valid."""
    eval_targets: int = 1
    """sliding protocol: targets per user in test, and as many before them in valid. A user keeps at least
    one train target: with n targets, test takes min(k, n - 1) and valid min(k, n - 1 - test). More than 1
    gives an evaluation set large enough to decide small AUC gaps (one pair per user is ~1.2k samples on
    MovieLens-small, about +-0.015 AUC)."""
    seed: int = 0
    """Seed of the negative sampling and of the paper protocol's user split."""
    targets_since: int | None = None
    """Only behaviors at or after this time (seconds since the epoch) become targets; earlier ones are history
    only. None: every behavior may be a target. (Set by the prepare job from ``since`` with
    ``history_before_since``.)"""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if self.max_len < 1 or self.min_history < 0:
            raise ValueError("need max_len >= 1 and min_history >= 0")
        if not (0 <= self.test_fraction < 1 and 0 <= self.valid_fraction < 1):
            raise ValueError("test_fraction and valid_fraction must be in [0, 1)")
        if self.eval_targets < 1:
            raise ValueError("eval_targets must be >= 1")


class PopularitySampler:
    """Draws items with probability proportional to their count, each with its category."""

    def __init__(self, items: np.ndarray, cats: np.ndarray, counts: np.ndarray) -> None:
        if len(np.unique(items)) < 2:
            raise ValueError("negative sampling needs at least two distinct items")
        self.items = np.asarray(items, dtype=np.int32)
        self.cats = np.asarray(cats, dtype=np.int32)
        self.cdf = np.cumsum(np.asarray(counts, dtype=np.float64))

    def draw(self, rng: np.random.Generator, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One negative per entry of ``exclude`` [N]: (items [N], cats [N]), never equal to ``exclude``."""
        picks = np.searchsorted(self.cdf, rng.random(len(exclude)) * self.cdf[-1], side="right")
        clash = self.items[picks] == exclude
        while clash.any():
            picks[clash] = np.searchsorted(self.cdf, rng.random(int(clash.sum())) * self.cdf[-1], side="right")
            clash = self.items[picks] == exclude
        return self.items[picks], self.cats[picks]


class _Rows:
    """Accumulates sample rows column by column (list columns as flat values plus lengths)."""

    def __init__(self) -> None:
        self.scalars: dict[str, list] = {k: [] for k in ("user", "target_item", "target_cat", "label", "timestamp", "split")}
        self.lists: dict[str, list[np.ndarray]] = {k: [] for k in ("hist_item", "hist_cat", "neg_hist_item", "neg_hist_cat")}

    def add(self, user: int, history: dict[str, np.ndarray], item: int, cat: int, label: int, ts: int, split: str) -> None:
        for key, value in zip(("user", "target_item", "target_cat", "label", "timestamp", "split"),
                              (user, item, cat, label, ts, split)):
            self.scalars[key].append(value)
        for key, value in history.items():
            self.lists[key].append(value)

    def table(self) -> pa.Table:
        columns = {}
        for field in SAMPLE_SCHEMA:
            if field.name in self.lists:
                parts = self.lists[field.name]
                values = np.concatenate(parts) if parts else np.zeros(0, np.int32)
                columns[field.name] = _list_column(values, np.array([len(p) for p in parts], np.int64))
            else:
                columns[field.name] = pa.array(self.scalars[field.name], type=field.type)
        columns["split"] = pa.array(self.scalars["split"], pa.string())
        return pa.table(columns, schema=SAMPLE_SCHEMA.append(pa.field("split", pa.string())))


def _paper_split(rng: np.random.Generator, config: SampleConfig) -> str:
    draw = rng.random()
    if draw < config.test_fraction:
        return "test"
    if draw < config.test_fraction + (1 - config.test_fraction) * config.valid_fraction:
        return "valid"
    return "train"


def _sliding_split(position: int, n_targets: int, eval_targets: int) -> str:
    test = min(eval_targets, n_targets - 1)
    valid = min(eval_targets, n_targets - 1 - test)
    from_end = n_targets - 1 - position
    if from_end < test:
        return "test"
    if from_end < test + valid:
        return "valid"
    return "train"


def build_samples(
    user: np.ndarray,
    item: np.ndarray,
    cat: np.ndarray,
    timestamp: np.ndarray,
    config: SampleConfig,
    sampler: PopularitySampler,
) -> pa.Table:
    """Samples (``SAMPLE_SCHEMA`` plus a ``split`` column) from encoded events.

    Args: [N] arrays sorted by (user, timestamp): user ids, item ids, category ids, timestamps in seconds.
    Each target yields a positive row and a row with a popularity-sampled negative target, both with the
    same history: the behaviors strictly earlier than the target, the last ``max_len`` of them, and one
    sampled negative behavior per history step (never the true behavior) for the auxiliary loss.
    """
    rows = _Rows()
    bounds = np.flatnonzero(np.diff(user)) + 1
    for start, stop in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(user)]])):
        if stop == start:
            continue
        uid = int(user[start])
        u_item, u_cat, u_ts = item[start:stop], cat[start:stop], timestamp[start:stop]
        rng = np.random.default_rng([config.seed, uid])
        neg_item, neg_cat = sampler.draw(rng, u_item)
        history_ends = np.searchsorted(u_ts, u_ts, side="left")
        if config.protocol == "paper":
            candidates = [len(u_item) - 1]
            split = _paper_split(rng, config)
        else:
            candidates = range(len(u_item))
        targets = [t for t in candidates if history_ends[t] >= config.min_history
                   and (config.targets_since is None or u_ts[t] >= config.targets_since)]
        for position, target in enumerate(targets):
            end = history_ends[target]
            begin = max(0, end - config.max_len)
            history = {
                "hist_item": u_item[begin:end],
                "hist_cat": u_cat[begin:end],
                "neg_hist_item": neg_item[begin:end],
                "neg_hist_cat": neg_cat[begin:end],
            }
            if config.protocol == "sliding":
                split = _sliding_split(position, len(targets), config.eval_targets)
            negative_item, negative_cat = sampler.draw(rng, u_item[target : target + 1])
            ts = int(u_ts[target])
            rows.add(uid, history, int(u_item[target]), int(u_cat[target]), 1, ts, split)
            rows.add(uid, history, int(negative_item[0]), int(negative_cat[0]), 0, ts, split)
    return rows.table()


def _list_column(values: np.ndarray, lengths: np.ndarray) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.astype(np.int32)))


def time_order(user: np.ndarray, item: np.ndarray, cat: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Indices sorting encoded events by user, then time; simultaneous events by item, then category, so
    the samples never depend on the order the events arrived in."""
    return np.lexsort((cat, item, timestamp, user))


def latest_histories(user: np.ndarray, item: np.ndarray, cat: np.ndarray, timestamp: np.ndarray,
                     max_len: int) -> pa.Table:
    """Each user's last ``max_len`` behaviors (``HISTORY_SCHEMA``), from [N] arrays sorted by (user, time)."""
    if len(user) == 0:
        return HISTORY_SCHEMA.empty_table()
    stops = np.concatenate([np.flatnonzero(np.diff(user)) + 1, [len(user)]])
    starts = np.concatenate([[0], stops[:-1]])
    begins = np.maximum(starts, stops - max_len)
    lengths = stops - begins
    take = np.repeat(begins - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + np.arange(lengths.sum())
    return pa.table(
        {
            "user": pa.array(user[starts], pa.int32()),
            "hist_item": _list_column(item[take], lengths),
            "hist_cat": _list_column(cat[take], lengths),
            "timestamp": pa.array(timestamp[stops - 1], pa.int64()),
        },
        schema=HISTORY_SCHEMA,
    )


def build_user_samples(events: pa.Table, config: SampleConfig,
                       sampler: PopularitySampler) -> tuple[pa.Table, pa.Table]:
    """(samples with ``split``, latest histories) of encoded events (``user``, ``item``, ``cat``,
    ``timestamp`` columns) in any order; every user's events must all be in ``events``."""
    columns = [events.column(name).to_numpy() for name in ("user", "item", "cat", "timestamp")]
    order = time_order(*columns)
    user, item, cat, timestamp = (column[order] for column in columns)
    return (build_samples(user, item, cat, timestamp, config, sampler),
            latest_histories(user, item, cat, timestamp, config.max_len))
