"""User-history stores: each user's latest behaviors as tokens, looked up by the user's string id while serving.

Two stores share the :class:`HistoryStore` interface, chosen by the Serve config's ``history``:

- :class:`UserHistoryStore`, the snapshot: ``user_history.parquet`` of a prepared dataset, loaded into each
  ingress replica; read-only (nothing to start, what the embedded default uses);
- :class:`dien.serve.redis_history.RedisHistoryStore`: one Redis shared by every replica, written by
  ``POST /v1/events`` and ``jobs/load_histories.py``, so a behavior is seen by the next request.

The snapshot's millions of users fit because nothing is a Python object per user or per behavior: users are rows of
flat NumPy arrays sorted by a 64-bit hash of their id (binary search, the id itself compared to rule out
collisions), histories are offsets into two int32 arrays of the dataset's vocabulary ids, and the
vocabularies' tokens stay Arrow string arrays. About 16 bytes per user plus 8 per behavior plus the ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dien.data.dataset_dir import USER_HISTORY_FILE, USER_HISTORY_SCHEMA, VOCAB_DIR, DatasetDir
from dien.data.vocab import RESERVED, VOCAB_FILES, Vocabulary

Behaviors = tuple[list[str | None], list[str | None]]
"""(item tokens, category tokens) of a history, oldest first; a category of None: the item table's."""


@dataclass(frozen=True)
class BehaviorEvent:
    """One behavior to append to its user's history (a row of ``POST /v1/events``)."""

    user_id: str
    item_id: str | None
    """None only from a prepared dataset's history: a behavior its vocabulary has no token for (it scores as
    the out-of-vocabulary item, as it did in the snapshot)."""
    timestamp: float
    """Seconds since the epoch: the history is kept in timestamp order whatever the arrival order."""
    category: str | None = None
    """None: the model's item table gives the item's category when it is scored."""
    event_type: str | None = None
    event_id: str | None = None
    """Applied once per user: a repeat with the same id is a duplicate. None: the event's other fields
    are its id, so an exact repeat (a client's retry) is a duplicate too."""

    def key(self) -> str:
        """The id duplicates are recognized by."""
        if self.event_id is not None:
            return self.event_id
        return f"{self.timestamp!r}/{self.item_id}/{self.category}/{self.event_type}"


@dataclass(frozen=True)
class AppendResult:
    stored: list[int]
    """Positions (0-based, in the request) of the events appended."""
    duplicates: list[int]
    """Positions of the events already applied (same user and event id), left as they were."""


class HistoryStoreError(Exception):
    """A store cannot do what was asked; the message names the store."""


class StoreUnavailable(HistoryStoreError):
    """The store does not answer (down, unreachable, too slow): the request may succeed when retried."""


class ReadOnlyStore(HistoryStoreError):
    """The store takes no events (the snapshot)."""


class HistoryStore(Protocol):
    """What the ingress asks of a user-history store."""

    name: str
    """Says which store, for messages and ``/healthz`` (never holds a password)."""

    async def history(self, user_id: str) -> Behaviors | None:
        """The user's newest behaviors, oldest first, or None for a user the store does not know."""

    async def append(self, events: Sequence[BehaviorEvent]) -> AppendResult:
        """Append ``events`` to their users' histories, each in timestamp order, duplicates applied once."""

    async def health(self) -> dict[str, object]:
        """Facts for ``/healthz``; raises :class:`StoreUnavailable` when the store does not answer."""

    async def close(self) -> None:
        """Release connections."""


def _hash_ids(user_ids: list[str]) -> np.ndarray:
    # Python's string hash: fast and well mixed; salted per process, which is fine because the store is
    # built and queried in the same process.
    return np.fromiter((hash(u) for u in user_ids), dtype=np.int64, count=len(user_ids))


def tokens_of(tokens: pa.Array, ids: np.ndarray) -> list[str | None]:
    """The tokens of vocabulary ids (``tokens[i]`` is id ``i + RESERVED``); None for a reserved id."""
    index = np.asarray(ids).astype(np.int64) - RESERVED
    return tokens.take(pa.array(index, mask=index < 0)).to_pylist()


class UserHistoryStore:
    """The snapshot: latest history of each known user as tokens (oldest first), from flat arrays."""

    def __init__(self, table: pa.Table, items: Vocabulary, categories: Vocabulary, source: str = "table") -> None:
        """``table``: ``USER_HISTORY_SCHEMA`` rows, ids in the vocabularies ``items`` and ``categories``."""
        user_ids = table.column("user_id").combine_chunks()
        if user_ids.null_count:
            raise ValueError(f"{source}: {user_ids.null_count} rows have no user_id")
        hashes = _hash_ids(user_ids.to_pylist())
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]
        self._user_ids = user_ids.take(pa.array(order))
        lists = {name: table.column(name).combine_chunks().take(pa.array(order)) for name in ("hist_item", "hist_cat")}
        offsets = {name: column.offsets.to_numpy().astype(np.int64) for name, column in lists.items()}
        self._offsets = offsets["hist_item"] - offsets["hist_item"][0]
        if not np.array_equal(self._offsets, offsets["hist_cat"] - offsets["hist_cat"][0]):
            raise ValueError(f"{source}: hist_item and hist_cat differ in length in some rows")
        self._items = lists["hist_item"].flatten().to_numpy(zero_copy_only=False)
        self._cats = lists["hist_cat"].flatten().to_numpy(zero_copy_only=False)
        for name, ids, vocabulary in (("hist_item", self._items, items), ("hist_cat", self._cats, categories)):
            if len(ids) and (ids.min() < 0 or ids.max() >= len(vocabulary)):
                raise ValueError(f"{source}: {name} has ids outside the dataset's vocabulary "
                                 f"(0..{len(vocabulary) - 1}); are the history and vocab/ from the same dataset?")
        self._item_tokens = items.tokens
        self._cat_tokens = categories.tokens
        self.name = f"snapshot {source}"
        self._check_unique(source)

    def _check_unique(self, source: str) -> None:
        same = np.flatnonzero(self._hashes[1:] == self._hashes[:-1])
        for i in same:
            if self._user_ids[int(i)].as_py() == self._user_ids[int(i) + 1].as_py():
                raise ValueError(f"{source}: user_id {self._user_ids[int(i)].as_py()!r} appears more than once")

    @classmethod
    def load(cls, path: str | Path) -> "UserHistoryStore":
        """From a prepared dataset directory, or the ``user_history.parquet`` file inside one."""
        path = Path(path)
        file = path / USER_HISTORY_FILE if path.is_dir() else path
        try:
            dataset = DatasetDir(file.parent)
        except FileNotFoundError:
            raise FileNotFoundError(f"{file}: a user history must sit in a prepared dataset directory (its "
                                    f"{VOCAB_DIR}/ gives the ids their tokens); {file.parent} is not one") from None
        if not file.is_file():
            raise FileNotFoundError(f"{file}: missing (the dataset at {dataset.path} has no user history)")
        vocab = dataset.path / VOCAB_DIR
        return cls(pq.read_table(file, schema=USER_HISTORY_SCHEMA),
                   Vocabulary.load(vocab / VOCAB_FILES["item"]), Vocabulary.load(vocab / VOCAB_FILES["category"]),
                   source=str(file))

    def __len__(self) -> int:
        return len(self._hashes)

    @property
    def nbytes(self) -> int:
        """Memory held by the store's arrays (tokens included)."""
        return int(self._hashes.nbytes + self._offsets.nbytes + self._items.nbytes + self._cats.nbytes
                   + self._user_ids.nbytes + self._item_tokens.nbytes + self._cat_tokens.nbytes)

    def _row(self, user_id: str) -> int | None:
        key = hash(user_id)
        row = int(np.searchsorted(self._hashes, key))
        while row < len(self._hashes) and self._hashes[row] == key:
            if self._user_ids[row].as_py() == user_id:
                return row
            row += 1
        return None

    def lookup(self, user_id: str) -> tuple[list[str | None], list[str | None]] | None:
        """(item tokens, category tokens) of the user's history, oldest first, or None for an unknown user.
        A stored out-of-vocabulary id has no token and comes back as None."""
        row = self._row(user_id)
        if row is None:
            return None
        start, stop = self._offsets[row], self._offsets[row + 1]
        return (tokens_of(self._item_tokens, self._items[start:stop]),
                tokens_of(self._cat_tokens, self._cats[start:stop]))


    async def history(self, user_id: str) -> Behaviors | None:
        return self.lookup(user_id)

    async def append(self, events: Sequence[BehaviorEvent]) -> AppendResult:
        raise ReadOnlyStore(f"the user-history store is a read-only {self.name}: events need the Redis store "
                            "(history: {store: redis, url: ...} in the Serve config's args)")

    async def health(self) -> dict[str, object]:
        return {"store": "snapshot", "users": len(self)}

    async def close(self) -> None:
        return None

