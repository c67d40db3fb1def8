"""Versions side by side: which served version answers a request, which shadow it, and how the shadows compare.

One Scorer deployment per version rather than Serve's model multiplexing: multiplexing loads models on
demand into a shared pool (made for many models and few requests each); a rollout has two or three versions
that each need warm replicas, a batch queue of their own (a batch holds one model's requests), their own
replica count and resources (a shadow may run on fewer), and their own health. The Ingress holds a handle per
version and this :class:`Router`, rebuilt from ``user_config`` without a restart.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from dien.serve.config import RoutingConfig


def unit_hash(key: str, salt: bytes) -> float:
    """A stable hash of ``key`` in [0, 1) (the same on every replica and run, unlike ``hash``)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, salt=salt).digest()
    return int.from_bytes(digest, "big") / 2**64


class Router:
    """The routing of :class:`RoutingConfig` over the versions ``labels`` (in ``args.model``'s order)."""

    SPLIT_SALT, SHADOW_SALT = b"dien-split", b"dien-shadow"

    def __init__(self, config: RoutingConfig, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        config.check(self.labels)
        self.config = config
        weights = config.split if config.split is not None else {self.labels[0]: 1.0}
        total = sum(weights.values())
        self.shares = {label: weight / total for label, weight in weights.items() if weight > 0}
        self._bounds = np.cumsum(list(self.shares.values()))
        self._bounds[-1] = 1.0

    @property
    def primary(self) -> str:
        """The version with the largest share (the first of equals): what ``GET /v1/model`` shows on top."""
        return max(self.shares, key=self.shares.get)

    def route(self, user_id: str | None) -> str:
        """The version that answers a request of ``user_id`` (None: at random, by the shares)."""
        if len(self.shares) == 1:
            return self.primary
        point = unit_hash(user_id, self.SPLIT_SALT) if user_id is not None else random.random()
        return list(self.shares)[int(np.searchsorted(self._bounds, point, side="right"))]

    def shadows(self, user_id: str | None, answered: str) -> list[str]:
        """The shadow versions that score a copy of this request (never the one that answered it)."""
        if not self.config.shadow or self.config.shadow_fraction == 0:
            return []
        point = unit_hash(user_id, self.SHADOW_SALT) if user_id is not None else random.random()
        if point >= self.config.shadow_fraction:
            return []
        return [label for label in self.config.shadow if label != answered]

    def describe(self) -> dict[str, Any]:
        return {"split": self.shares, "shadow": list(self.config.shadow),
                "shadow_fraction": self.config.shadow_fraction, "primary": self.primary}


@dataclass
class ShadowComparison:
    """How one shadow version's scores compared with the answered ones, over the requests this replica
    mirrored: mean and largest absolute difference of the click probabilities, and how often both put the
    same candidate first."""

    requests: int = 0
    failed: int = 0
    same_top: int = 0
    abs_diff_sum: float = 0.0
    max_abs_diff: float = 0.0
    against: dict[str, int] = field(default_factory=dict)
    """Answering version -> requests compared against it."""

    def add(self, answered_label: str, answered: Sequence[float], shadow: Sequence[float]) -> float:
        """Record one request; its mean absolute difference."""
        a, s = np.asarray(answered), np.asarray(shadow)
        diff = np.abs(a - s)
        self.requests += 1
        self.against[answered_label] = self.against.get(answered_label, 0) + 1
        self.same_top += int(np.argmax(a) == np.argmax(s))
        self.abs_diff_sum += float(diff.mean())
        self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
        return float(diff.mean())

    def summary(self) -> dict[str, Any]:
        compared = max(self.requests, 1)
        return {"requests": self.requests, "failed": self.failed, "against": self.against,
                "mean_abs_diff": self.abs_diff_sum / compared, "max_abs_diff": self.max_abs_diff,
                "same_top_candidate": self.same_top / compared}
