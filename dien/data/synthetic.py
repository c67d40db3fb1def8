"""Synthetic behavior logs whose users drift between interests, so that behavior *order* carries signal.

The catalog: ``n_categories`` categories of ``n_items // n_categories`` items each; categories and the items
inside a category have Zipf popularity. Every category has ``successors`` successor categories (a fixed
random graph, the same for all users).

A user's log is a walk through interest *phases*: the first phase's category is drawn by popularity; after
each event the user moves on with probability ``drift`` to a uniformly chosen successor of the current
category. Each event is an item of the current category (by in-category popularity), except with probability
``noise``, when it is any item drawn by global popularity.

So the next behavior depends on the *current* interest and where it can drift (what GRU-based interest
evolution models), not only on the bag of past items (what sum pooling and DIN's attention see). With the
paper protocol (last behavior vs. a popularity-sampled negative) the expected ordering is
DIEN > DIN > BaseModel.

Users are generated in fixed blocks of ``block_size``, each from its own seed, so any partition of the
blocks across tasks gives the same events.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

RAW_EVENT_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("category", pa.string()),
        ("timestamp", pa.int64()),
        ("event_type", pa.string()),
    ]
)

START_TIME = 1_500_000_000
"""Earliest first event (seconds since the epoch); first events spread over the following year."""


@dataclass(frozen=True)
class SyntheticConfig:
    n_users: int = 90_000
    """Number of users. The default gives ~146k training samples (paper protocol): with a third of that,
    every sequence model overfits within 4-7 epochs and DIN's attention no longer beats sum pooling."""
    n_items: int = 1_000
    """Number of items (rounded down to a multiple of ``n_categories``)."""
    n_categories: int = 20
    """Number of categories."""
    min_events: int = 20
    """Fewest events per user."""
    max_events: int = 60
    """Most events per user (the count is uniform in [min_events, max_events])."""
    drift: float = 0.2
    """Probability, after each event, that the user's interest moves to a successor category."""
    successors: int = 2
    """Successor categories per category: the fewer, the more predictable a drift is."""
    noise: float = 0.05
    """Probability that an event ignores the current interest (an item by global popularity)."""
    taste_step: int = 1
    """0: an event's item is drawn by in-category popularity. k > 0: a user's taste *evolves* inside each
    category: successive events there walk along the category's items, k items per event in a direction
    of the user's own, so the next item depends on the order of the past ones (a bag of them shows the
    visited stretch but not which end is the current one)."""
    zipf: float = 1.0
    """Zipf exponent of category popularity and of item popularity inside a category."""
    mean_gap_seconds: float = 86_400.0
    """Mean time between a user's consecutive events."""
    block_size: int = 1_000
    """Users per generation block (the unit of determinism and of parallelism)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_categories < 1 or self.n_items < self.n_categories:
            raise ValueError("need n_categories >= 1 and n_items >= n_categories")
        if not 1 <= self.min_events <= self.max_events:
            raise ValueError("need 1 <= min_events <= max_events")
        for name in ("drift", "noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        if not 1 <= self.successors <= self.n_categories:
            raise ValueError("successors must be in [1, n_categories]")

    @property
    def items_per_category(self) -> int:
        return self.n_items // self.n_categories

    @property
    def n_blocks(self) -> int:
        return -(-self.n_users // self.block_size)


def _zipf(size: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    return weights / weights.sum()


@dataclass(frozen=True)
class Catalog:
    """The world every user shares. Item k belongs to category k // items_per_category."""

    category_probs: np.ndarray
    """[C] popularity of each category."""
    item_probs_in_category: np.ndarray
    """[items_per_category] popularity of an item's rank inside its category."""
    successors: np.ndarray
    """[C, S] successor categories of each category."""

    @classmethod
    def build(cls, config: SyntheticConfig) -> "Catalog":
        rng = np.random.default_rng([config.seed, 0xCA7A])
        n_cat = config.n_categories
        category_probs = _zipf(n_cat, config.zipf)[rng.permutation(n_cat)]
        successors = np.stack([rng.choice(n_cat, config.successors, replace=False) for _ in range(n_cat)])
        return cls(category_probs, _zipf(config.items_per_category, config.zipf), successors)


def _taste_positions(rng: np.random.Generator, user: np.ndarray, category: np.ndarray, n_users: int,
                     config: SyntheticConfig) -> np.ndarray:
    """Item ranks of a user's successive events in each category: a walk along the category's item line from a
    random start in a random direction, ``taste_step`` items per event, reflected at the ends.

    ``user`` and ``category`` are [N] in time order; returns [N] ranks.
    """
    per_cat = config.items_per_category
    start = rng.integers(per_cat, size=(n_users, config.n_categories))
    direction = rng.choice([-1, 1], size=(n_users, config.n_categories))
    key = user * config.n_categories + category
    order = np.argsort(key, kind="stable")
    first = np.concatenate([[True], key[order][1:] != key[order][:-1]])
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    visit = np.empty(len(order), dtype=np.int64)
    visit[order] = np.arange(len(order)) - group_start
    position = start[user, category] + direction[user, category] * config.taste_step * visit
    period = max(2 * (per_cat - 1), 1)
    folded = position % period
    return np.where(folded < per_cat, folded, period - folded)


def generate_block(config: SyntheticConfig, block: int, catalog: Catalog | None = None) -> pa.Table:
    """Raw events (``RAW_EVENT_SCHEMA``) of the users in block ``block``, each user's in time order."""
    catalog = catalog or Catalog.build(config)
    rng = np.random.default_rng([config.seed, block])
    first_user = block * config.block_size
    n_users = min(config.block_size, config.n_users - first_user)
    if n_users <= 0:
        raise ValueError(f"block {block} is past the last user ({config.n_users} users)")
    per_cat = config.items_per_category

    counts = rng.integers(config.min_events, config.max_events + 1, size=n_users)
    user = np.repeat(np.arange(n_users), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(user)) - np.repeat(starts, counts)

    moves = (rng.random(len(user)) < config.drift) & (position > 0)
    phase = np.cumsum(moves) - np.repeat(np.cumsum(moves)[starts] - moves[starts], counts)
    n_phases = int(phase.max()) + 1
    phase_category = np.empty((n_users, n_phases), dtype=np.int64)
    phase_category[:, 0] = rng.choice(config.n_categories, size=n_users, p=catalog.category_probs)
    picks = rng.integers(config.successors, size=(n_users, n_phases))
    for k in range(1, n_phases):
        phase_category[:, k] = catalog.successors[phase_category[:, k - 1], picks[:, k]]

    category = phase_category[user, phase]
    noisy = rng.random(len(user)) < config.noise
    category[noisy] = rng.choice(config.n_categories, size=int(noisy.sum()), p=catalog.category_probs)
    rank = rng.choice(per_cat, size=len(user), p=catalog.item_probs_in_category)
    if config.taste_step:
        walked = ~noisy
        rank[walked] = _taste_positions(rng, user[walked], category[walked], n_users, config)
    item = category * per_cat + rank

    gaps = 1 + rng.exponential(config.mean_gap_seconds, size=len(user)).astype(np.int64)
    gaps[starts] = rng.integers(0, 365 * 86_400, size=n_users)
    timestamp = START_TIME + np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[starts] - gaps[starts], counts)

    def ids(prefix: str, values: np.ndarray) -> pa.Array:
        return pa.array(np.char.add(prefix, values.astype(str)))

    return pa.table(
        {
            "user_id": ids("u", user + first_user),
            "item_id": ids("i", item),
            "category": ids("c", category),
            "timestamp": pa.array(timestamp, pa.int64()),
            "event_type": pa.array(np.full(len(user), "click")),
        },
        schema=RAW_EVENT_SCHEMA,
    )


def generate(config: SyntheticConfig) -> pa.Table:
    """All users' raw events in one table (for small data; the pipeline generates blocks in parallel)."""
    catalog = Catalog.build(config)
    return pa.concat_tables(generate_block(config, block, catalog) for block in range(config.n_blocks))
