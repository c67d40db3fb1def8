"""A prepared dataset directory on disk (what ``jobs/prepare_data.py`` writes and training reads).

    <dir>/train/, valid/, test/    sharded Parquet, one row per target (``SAMPLE_SCHEMA``)
    <dir>/vocab/                   user/item/category vocabularies and the item -> category table
    <dir>/user_history.parquet     each user's latest history, for serving (``USER_HISTORY_SCHEMA``)
    <dir>/rejects/                 input rows that could not be used, with the reason (``REJECT_SCHEMA``)
    <dir>/manifest.json            what was built from what: counts, vocabulary sizes, settings
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from dien.data.events import REJECT_SCHEMA
from dien.data.samples import HISTORY_SCHEMA, SAMPLE_SCHEMA, SPLITS
from dien.data.vocab import Vocabularies

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
VOCAB_DIR = "vocab"
REJECTS_DIR = "rejects"
USER_HISTORY_FILE = "user_history.parquet"
USER_HISTORY_SCHEMA = pa.schema([pa.field("user_id", pa.string()), *HISTORY_SCHEMA])
"""The user's string id (as in the raw events), its vocabulary id, and its latest history."""
SAMPLE_ROW_GROUP_ROWS = 4096
"""Rows per Parquet row group of the sample splits: the unit the training order permutes
(``dien.data.epochs``)."""
OUTPUTS = (*SPLITS, VOCAB_DIR, REJECTS_DIR, USER_HISTORY_FILE, MANIFEST_FILE)
"""Everything a dataset directory holds (what a rebuild replaces)."""


def load_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a dataset directory; fails clearly on anything else."""
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a prepared dataset: {MANIFEST_FILE} is missing")
    manifest = json.loads(file.read_text())
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{file} has schema version {manifest.get('schema_version')}; this code reads "
                         f"version {SCHEMA_VERSION}")
    return manifest


class DatasetDir:
    """Read access to a prepared dataset: splits as Arrow tables or Ray datasets, vocabularies, histories."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = load_manifest(self.path)

    @property
    def n_items(self) -> int:
        """Item embedding table size (the item vocabulary, reserved ids included)."""
        return int(self.manifest["n_items"])

    @property
    def n_cats(self) -> int:
        """Category embedding table size (reserved ids included)."""
        return int(self.manifest["n_cats"])

    @property
    def max_len(self) -> int:
        return int(self.manifest["max_len"])

    def split_files(self, split: str) -> list[str]:
        """The Parquet shards of a split, sorted by name."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return sorted(str(p) for p in (self.path / split).glob("*.parquet"))

    def read_split(self, split: str, columns: list[str] | None = None) -> pa.Table:
        """A whole split in memory (``SAMPLE_SCHEMA``)."""
        schema = SAMPLE_SCHEMA if columns is None else pa.schema([SAMPLE_SCHEMA.field(c) for c in columns])
        tables = [pq.read_table(f, columns=columns, schema=schema) for f in self.split_files(split)]
        return pa.concat_tables(tables) if tables else schema.empty_table()

    def ray_split(self, split: str, columns: list[str] | None = None):
        """A split as a Ray dataset (streamed from its shards, for Ray Train ingest)."""
        import ray

        from dien.data.readers import read_parquet_files

        files = self.split_files(split)
        if not files:
            return ray.data.from_arrow(self.read_split(split, columns))
        return read_parquet_files(files, columns)

    def vocabularies(self) -> Vocabularies:
        return Vocabularies.load(self.path / VOCAB_DIR)

    def user_history(self) -> pa.Table:
        """Every user's latest history (``USER_HISTORY_SCHEMA``)."""
        return pq.read_table(self.path / USER_HISTORY_FILE, schema=USER_HISTORY_SCHEMA)

    def rejects(self) -> pa.Table:
        """Input rows that could not be used (``REJECT_SCHEMA``)."""
        files = sorted((self.path / REJECTS_DIR).glob("*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]) if files else REJECT_SCHEMA.empty_table()
