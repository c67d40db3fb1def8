"""Frequency-sorted vocabularies: index 0 is padding, 1 out-of-vocabulary, then tokens by descending count."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dien.data.samples import PopularitySampler

PADDING = 0
OUT_OF_VOCABULARY = 1
RESERVED = 2


class Vocabulary:
    """Maps string tokens to int ids. ``tokens[i]`` is the token of id ``i + RESERVED``."""

    def __init__(self, tokens: pa.Array, counts: np.ndarray) -> None:
        self.tokens = tokens.cast(pa.string())
        self.counts = np.asarray(counts, dtype=np.int64)

    @classmethod
    def from_counts(cls, tokens: pa.Array, counts: np.ndarray, min_count: int = 1) -> "Vocabulary":
        """Keep tokens seen at least ``min_count`` times, most frequent first (ties by token, so runs agree)."""
        counts = np.asarray(counts, dtype=np.int64)
        keep = counts >= min_count
        tokens, counts = tokens.filter(pa.array(keep)), counts[keep]
        order = pc.sort_indices(pa.table({"count": counts, "token": tokens}),
                                sort_keys=[("count", "descending"), ("token", "ascending")])
        return cls(tokens.take(order), counts[order.to_numpy()])

    @classmethod
    def from_values(cls, values: pa.Array | pa.ChunkedArray, min_count: int = 1) -> "Vocabulary":
        """Count the tokens of ``values`` and build the vocabulary."""
        value_counts = pc.value_counts(values)
        return cls.from_counts(value_counts.field("values"), value_counts.field("counts").to_numpy(), min_count)

    def __len__(self) -> int:
        """Number of ids, including the reserved ones (the embedding table size)."""
        return len(self.tokens) + RESERVED

    def extended_by(self, newer: "Vocabulary") -> "Vocabulary":
        """This vocabulary's tokens at their ids, then ``newer``'s tokens it lacks, in ``newer``'s order (most
        frequent first); every count is ``newer``'s (0 for a token ``newer`` has not seen)."""
        added = pc.invert(pc.is_in(newer.tokens, value_set=self.tokens))
        tokens = pa.concat_arrays([self.tokens, newer.tokens.filter(added)])
        positions = pc.fill_null(pc.index_in(tokens, value_set=newer.tokens), -1).to_numpy()
        counts = np.zeros(len(tokens), np.int64)
        counts[positions >= 0] = newer.counts[positions[positions >= 0]]
        return Vocabulary(tokens, counts)

    def encode(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Ids (int32) of ``values``; unknown or null tokens map to OUT_OF_VOCABULARY."""
        index = pc.index_in(values, value_set=self.tokens)
        return pc.fill_null(pc.add(index, RESERVED), OUT_OF_VOCABULARY).to_numpy().astype(np.int32)

    def lookup(self, ids: np.ndarray) -> list[str | None]:
        """Tokens of ``ids`` (None for the reserved ids)."""
        return [self.tokens[i - RESERVED].as_py() if i >= RESERVED else None for i in np.asarray(ids)]

    def save(self, path: str | Path) -> None:
        pq.write_table(pa.table({"token": self.tokens, "count": self.counts}), path)

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        table = pq.read_table(path)
        return cls(table.column("token").combine_chunks(), table.column("count").to_numpy())


ENCODED_EVENT_SCHEMA = pa.schema(
    [("user", pa.int32()), ("item", pa.int32()), ("cat", pa.int32()), ("timestamp", pa.int64())]
)
"""Raw events as vocabulary ids."""
VOCAB_FILES = {"user": "user.parquet", "item": "item.parquet", "category": "category.parquet"}
ITEM_CATEGORY_FILE = "item_category.parquet"
OOV_CATEGORY_FILE = "oov_categories.parquet"


@dataclass
class Vocabularies:
    user: Vocabulary
    item: Vocabulary
    category: Vocabulary
    item_category: np.ndarray
    """[len(item)] category id of each item id (0 for the reserved ids)."""
    oov_category_counts: np.ndarray | None = None
    """[len(category)] events per category of the items below ``min_count`` (they all share the
    out-of-vocabulary id); None: no such items."""

    @classmethod
    def from_counts(cls, user_counts: pa.Table, item_category_counts: pa.Table, min_count: int = 1) -> "Vocabularies":
        """Vocabularies from event counts, so that they can be aggregated anywhere (in-process or in Ray Data).

        user_counts: ``user_id``, ``count`` (events per user); item_category_counts: ``item_id``,
        ``category``, ``count`` (events per item and category). An item's category is the smallest
        category it appears with; ``min_count`` applies to items and categories, never to users.
        """
        pairs = item_category_counts
        item_counts = pairs.group_by("item_id").aggregate([("count", "sum"), ("category", "min")])
        # A null category (an item an item table does not list) is no token: such items get the OOV category.
        category_counts = pairs.filter(pairs.column("category").is_valid()).group_by("category").aggregate(
            [("count", "sum")])
        items = Vocabulary.from_counts(item_counts.column("item_id").combine_chunks(),
                                       item_counts.column("count_sum").to_numpy(), min_count)
        categories = Vocabulary.from_counts(category_counts.column("category").combine_chunks(),
                                            category_counts.column("count_sum").to_numpy(), min_count)
        users = Vocabulary.from_counts(user_counts.column("user_id").combine_chunks(),
                                       user_counts.column("count").to_numpy())
        item_category = np.zeros(len(items), dtype=np.int32)
        item_ids = items.encode(item_counts.column("item_id"))
        item_cats = categories.encode(item_counts.column("category_min"))
        known = item_ids > OUT_OF_VOCABULARY
        item_category[item_ids[known]] = item_cats[known]
        oov_counts = np.bincount(item_cats[~known], weights=item_counts.column("count_sum").to_numpy()[~known],
                                 minlength=len(categories)).astype(np.int64)
        return cls(users, items, categories, item_category, oov_counts if oov_counts.any() else None)

    @classmethod
    def from_events(cls, events: pa.Table, min_count: int = 1) -> "Vocabularies":
        """Vocabularies of raw events (the raw-event schema) counted in-process."""
        user_counts = events.group_by("user_id").aggregate([("user_id", "count")])
        pairs = events.group_by(["item_id", "category"]).aggregate([("item_id", "count")])
        return cls.from_counts(user_counts.rename_columns(["user_id", "count"]),
                               pairs.rename_columns(["item_id", "category", "count"]), min_count)

    def encode(self, events: pa.Table) -> pa.Table:
        """Raw events as ids (``ENCODED_EVENT_SCHEMA``); unknown tokens map to OUT_OF_VOCABULARY."""
        return pa.table(
            {
                "user": self.user.encode(events.column("user_id")),
                "item": self.item.encode(events.column("item_id")),
                "cat": self.category.encode(events.column("category")),
                "timestamp": events.column("timestamp"),
            },
            schema=ENCODED_EVENT_SCHEMA,
        )

    def extending(self, reference: "Vocabularies") -> "Vocabularies":
        """These vocabularies (of a new window of events) laid over ``reference``'s: every token of the
        reference keeps its id, tokens new to it get the ids after (most frequent first among themselves), and
        counts are this window's. An item keeps the category this window gives it, else the reference's."""
        user, item, category = (getattr(reference, n).extended_by(getattr(self, n)) for n in VOCAB_FILES)
        category_ids = np.concatenate([np.arange(RESERVED), category.encode(self.category.tokens)]).astype(np.int32)
        item_category = np.zeros(len(item), dtype=np.int32)
        item_category[:len(reference.item)] = reference.item_category
        seen = item.encode(self.item.tokens)
        item_category[seen] = category_ids[self.item_category[RESERVED:]]
        oov = None
        if self.oov_category_counts is not None:
            oov = np.zeros(len(category), np.int64)
            np.add.at(oov, category_ids, self.oov_category_counts)
        return Vocabularies(user, item, category, item_category, oov)

    def sampler(self) -> PopularitySampler:
        """Negatives drawn from every item by its count, the items below ``min_count`` included as the
        out-of-vocabulary id (with their own categories). So the OOV id is a negative as often as its items
        are positives, and learns the base rate instead of "always clicked"."""
        ids = np.arange(RESERVED, len(self.item), dtype=np.int32)
        cats, counts = self.item_category[ids], self.item.counts
        if self.oov_category_counts is not None:
            oov_cats = np.flatnonzero(self.oov_category_counts).astype(np.int32)
            ids = np.concatenate([ids, np.full(len(oov_cats), OUT_OF_VOCABULARY, np.int32)])
            cats = np.concatenate([cats, oov_cats])
            counts = np.concatenate([counts, self.oov_category_counts[oov_cats]])
        return PopularitySampler(ids, cats, counts)

    def sizes(self) -> dict[str, int]:
        """Ids per vocabulary, including the reserved ones (embedding table sizes)."""
        return {"user": len(self.user), "item": len(self.item), "category": len(self.category)}

    def save(self, directory: str | Path) -> None:
        """One Parquet file per vocabulary (``token``, ``count``; row i is id i + 2) and the item -> category
        table (``item``, ``category`` ids, every item id including the reserved ones)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, file in VOCAB_FILES.items():
            getattr(self, name).save(directory / file)
        pq.write_table(pa.table({"item": np.arange(len(self.item), dtype=np.int32), "category": self.item_category}),
                       directory / ITEM_CATEGORY_FILE)
        if self.oov_category_counts is not None:
            cats = np.flatnonzero(self.oov_category_counts).astype(np.int32)
            pq.write_table(pa.table({"category": cats, "count": self.oov_category_counts[cats]}),
                           directory / OOV_CATEGORY_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> "Vocabularies":
        directory = Path(directory)
        vocabularies = {name: Vocabulary.load(directory / file) for name, file in VOCAB_FILES.items()}
        item_category = pq.read_table(directory / ITEM_CATEGORY_FILE).column("category").to_numpy()
        oov_counts = None
        if (directory / OOV_CATEGORY_FILE).exists():
            table = pq.read_table(directory / OOV_CATEGORY_FILE)
            oov_counts = np.zeros(len(vocabularies["category"]), np.int64)
            oov_counts[table.column("category").to_numpy()] = table.column("count").to_numpy()
        return cls(**vocabularies, item_category=item_category.astype(np.int32), oov_category_counts=oov_counts)
