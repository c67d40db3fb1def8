"""Score requests for load tests, made from a prepared dataset so that they look like production traffic.

Every request names a user of the dataset's ``user_history.parquet`` (so the ingress's history store is hit
and the scorer runs the user's real history) and carries candidates drawn from the item vocabulary, each with
its category, by popularity (the vocabulary's counts), as a retrieval stage would hand them over.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dien.data.dataset_dir import DatasetDir
from dien.data.vocab import RESERVED


@dataclass(frozen=True)
class Workload:
    """What the load generator sends: pre-encoded JSON bodies, cycled through."""

    bodies: tuple[bytes, ...]
    """Request bodies, UTF-8 JSON, for ``path``."""
    candidates: int
    """Candidates per request (every body has this many); for events, the events per request."""
    path: str = "/v1/score"
    """The endpoint the bodies are posted to."""

    @property
    def mean_body_bytes(self) -> float:
        return float(np.mean([len(b) for b in self.bodies]))


FORMS = ("objects", "columns")


def _behaviors(items: list[str], categories: list[str], form: str) -> Any:
    if form == "columns":
        return {"item_id": items, "category": categories}
    return [{"item_id": item, "category": category} for item, category in zip(items, categories)]


def score_bodies(data: str | Path, candidates: int, requests: int = 512, inline_history: bool = False,
                 seed: int = 0, form: str = "objects") -> Workload:
    """``requests`` distinct score bodies with ``candidates`` candidates each, from the dataset at ``data``.

    inline_history: send each user's stored history in the body (``history``) instead of letting the
    ingress look it up; bodies grow by about 40 bytes per behavior. form: lists of behaviors as ``objects``
    (``[{"item_id", "category"}, ...]``) or ``columns`` (``{"item_id": [...], "category": [...]}``).
    """
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    dataset = DatasetDir(data)
    vocab = dataset.vocabularies()
    histories = dataset.user_history()
    if histories.num_rows == 0:
        raise ValueError(f"{data} has no user histories to build requests from")
    items = np.asarray(vocab.item.tokens.to_pylist(), dtype=object)
    categories = np.asarray(vocab.category.lookup(vocab.item_category[RESERVED:]), dtype=object)
    popularity = np.asarray(vocab.item.counts, dtype=np.float64)
    popularity = popularity / popularity.sum()
    rng = np.random.default_rng(seed)
    users = rng.choice(histories.num_rows, size=requests, replace=histories.num_rows < requests)
    user_ids = histories.column("user_id").take(users).to_pylist()
    if inline_history:
        hist_items = histories.column("hist_item").take(users).to_pylist()
        hist_cats = histories.column("hist_cat").take(users).to_pylist()
    bodies = []
    for n, user in enumerate(user_ids):
        # Distinct candidates where the vocabulary allows: a ranking request never repeats an item.
        picked = rng.choice(len(items), size=candidates, replace=len(items) < candidates, p=popularity)
        body = {"user_id": user, "candidates": _behaviors(items[picked].tolist(), categories[picked].tolist(), form)}
        if inline_history:
            body["history"] = _behaviors(vocab.item.lookup(np.asarray(hist_items[n])),
                                         vocab.category.lookup(np.asarray(hist_cats[n])), form)
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return Workload(bodies=tuple(bodies), candidates=candidates)


def event_bodies(data: str | Path, events: int, requests: int = 512, users: int = 4096, seed: int = 0) -> Workload:
    """``requests`` distinct ``POST /v1/events`` bodies of ``events`` behaviors each, for ``users`` new users
    (``bench-user-<n>``, apart from the dataset's) and items of the dataset at ``data`` by popularity."""
    vocab = DatasetDir(data).vocabularies()
    items = np.asarray(vocab.item.tokens.to_pylist(), dtype=object)
    popularity = np.asarray(vocab.item.counts, dtype=np.float64)
    rng = np.random.default_rng(seed)
    bodies = []
    for n in range(requests):
        picked = items[rng.choice(len(items), size=events, p=popularity / popularity.sum())]
        owners = rng.integers(users, size=events)
        body = {"events": [{"user_id": f"bench-user-{u}", "item_id": item, "timestamp": 1_700_000_000 + n * events + i}
                           for i, (u, item) in enumerate(zip(owners.tolist(), picked.tolist()))]}
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return Workload(bodies=tuple(bodies), candidates=events, path="/v1/events")
