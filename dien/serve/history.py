"""The user-history store: each user's latest behaviors (``user_history.parquet`` of a prepared dataset),
looked up by the user's string id while serving.

Millions of users fit because nothing is a Python object per user or per behavior: users are rows of
flat NumPy arrays sorted by a 64-bit hash of their id (binary search, the id itself compared to rule out
collisions), histories are offsets into two int32 arrays of the dataset's vocabulary ids, and the
vocabularies' tokens stay Arrow string arrays. About 16 bytes per user plus 8 per behavior plus the ids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dien.data.dataset_dir import USER_HISTORY_FILE, USER_HISTORY_SCHEMA, VOCAB_DIR, DatasetDir
from dien.data.vocab import RESERVED, VOCAB_FILES, Vocabulary


def _hash_ids(user_ids: list[str]) -> np.ndarray:
    # Python's string hash: fast and well mixed; salted per process, which is fine because the store is
    # built and queried in the same process.
    return np.fromiter((hash(u) for u in user_ids), dtype=np.int64, count=len(user_ids))


class UserHistoryStore:
    """Latest history of each known user as tokens (oldest first), from flat arrays."""

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
        return (self._tokens(self._item_tokens, self._items[start:stop]),
                self._tokens(self._cat_tokens, self._cats[start:stop]))

    @staticmethod
    def _tokens(tokens: pa.Array, ids: np.ndarray) -> list[str | None]:
        index = ids.astype(np.int64) - RESERVED
        return tokens.take(pa.array(index, mask=index < 0)).to_pylist()
