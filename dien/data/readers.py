"""Ray Data readers: every source becomes one dataset of checked raw events (``CHECKED_SCHEMA``).

- ``events``: generic logs (CSV, TSV, Parquet, JSON lines; gzip by the ``.gz`` extension) with a column
  mapping; files are parsed in parallel read tasks, each file as a stream of blocks; optionally with an item
  table (``items``: item -> category, e.g. MovieLens ``movies.csv``) joined in those tasks;
- ``amazon``: the paper's Amazon reviews (``reviewerID``, ``asin``, ``unixReviewTime``) with each item's
  category from the metadata files (the last level of its first category path);
- ``synthetic``: the generator of ``dien.data.synthetic``, one read task per generation block, so the
  events are made where they are processed and never pass through the driver.

Item tables (the Amazon metadata, an event log's ``items``) are item-count sized: they are read in parallel by
Ray Data, collected once and broadcast to the read tasks, which look each event's item up (a map-side join).

Problems with the input as a whole (a missing file or column) are found on the driver before any task
runs and raised as :class:`~dien.data.events.InputError`; problems with single rows become rejected rows.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.datasource import FileBasedDatasource

from dien.data.events import MAX_RECORD_CHARS, ColumnMapping, InputError, ItemColumns, check_events
from dien.data.formats import (
    AMAZON_REVIEW_COLUMNS,
    ITEM_CATEGORY_SCHEMA,
    ROWS_PER_BLOCK,
    check_input_columns,
    expand_inputs,
    read_amazon_meta_tables,
    read_item_tables,
    read_raw_tables,
    resolve_format,
)
from dien.data.synthetic import Catalog, SyntheticConfig, generate_block

logger = logging.getLogger(__name__)

SOURCES = ("synthetic", "events", "amazon")


@dataclass(frozen=True)
class SourceConfig:
    kind: str = "synthetic"
    """synthetic | events | amazon."""
    inputs: tuple[str, ...] = ()
    """events, amazon: input files, directories or glob patterns (the Amazon reviews)."""
    format: str | None = None
    """events: csv | tsv | parquet | jsonl; None infers it from the file extensions."""
    columns: ColumnMapping = field(default_factory=ColumnMapping)
    """events: which input column holds each field."""
    keep_events: tuple[str, ...] | None = None
    """Keep only events of these types (needs an event type column); None keeps all."""
    items: tuple[str, ...] = ()
    """events: item table files (CSV, TSV, Parquet, JSON lines) that give each item's category; the log's own
    category column is then not read. Events whose item the table lacks keep their row with the
    out-of-vocabulary category (counted in the manifest)."""
    items_format: str | None = None
    """events: format of the item table; None infers it from the file extensions."""
    item_columns: ItemColumns = field(default_factory=ItemColumns)
    """events: which item table column holds the item and which its category."""
    category_separator: str | None = "|"
    """events: a multi-valued category in the item table (``Action|Comedy``) takes its first value; None keeps
    the whole text as one category."""
    meta: tuple[str, ...] = ()
    """amazon: the metadata files (JSON or Python-literal lines with ``asin`` and ``categories``)."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """synthetic: the generator's knobs."""
    strict: bool = False
    """A log file that cannot be read (a corrupt gzip stream, not the format it claims) stops the job; False:
    its rows read so far are kept and the file counts as one rejected row (``unreadable file``) naming it."""

    def __post_init__(self) -> None:
        if self.kind not in SOURCES:
            raise InputError(f"unknown source {self.kind!r}; choose one of {', '.join(SOURCES)}")
        if self.kind != "synthetic" and not self.inputs:
            raise InputError(f"source {self.kind} needs --input")
        if self.kind == "amazon" and not self.meta:
            raise InputError("source amazon needs --meta (the metadata files that give each item's category)")
        if self.keep_events is not None and self.kind == "events" and not self.columns.event_type:
            raise InputError("--keep-events needs an event type column: add event_type=COLUMN to --columns")
        if self.keep_events is not None and self.kind == "amazon":
            raise InputError("Amazon reviews have no event type to filter on")
        if self.items and self.kind != "events":
            raise InputError(f"--items applies to the events source, not {self.kind} (amazon: use --meta)")

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the source."""
        described: dict[str, Any] = {"kind": self.kind, "keep_events": list(self.keep_events or []) or None}
        if self.kind == "synthetic":
            described["synthetic"] = dict(self.synthetic.__dict__)
        else:
            described["inputs"] = list(self.inputs)
        if self.kind == "events":
            described["format"] = resolve_format(expand_inputs(list(self.inputs)), self.format)
            described["columns"] = self.columns.fields(category=not self.items)
            if self.items:
                described["items"] = {"inputs": list(self.items), "columns": self.item_columns.fields(),
                                      "category_rule": self.category_rule()}
        if self.kind == "amazon":
            described["meta"] = list(self.meta)
        return described


    def category_rule(self) -> str:
        """The documented rule for multi-valued item table categories, as the manifest records it."""
        if not self.category_separator:
            return "the whole value"
        return f"the first of the values separated by {self.category_separator!r}"


class _ParsedFiles(FileBasedDatasource):
    """Files parsed by ``parse(file, path) -> tables``; a failure names the file, and with ``unreadable`` (which
    turns the path and the error into a table of one rejected row) the rows read before it are kept and the
    file is reported instead of stopping the job."""

    def __init__(self, files: list[str], parse: Callable[[Any, str], Iterator[pa.Table]], random_access: bool,
                 unreadable: Callable[[str, str], pa.Table] | None = None):
        super().__init__(files)
        self._parse = parse
        self._random_access = random_access
        self._unreadable = unreadable

    def _open_input_source(self, filesystem, path: str, **open_args):
        if self._random_access:
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f, path: str) -> Iterator[pa.Table]:
        try:
            yield from self._parse(f, path)
        except InputError:
            raise
        except Exception as error:  # any parser failure: the message must name the file
            message = f"cannot read {path}: {type(error).__name__}: {error}"
            if self._unreadable is None:
                raise InputError(message) from None
            logger.warning("%s; its rows read so far are kept, the rest of the file is skipped (--strict stops "
                           "the job instead)", message)
            yield self._unreadable(path, message)


def _checked_file(f, path: str, format: str, columns: dict[str, str], keep_events: tuple[str, ...] | None,
                  item_categories: ray.ObjectRef | None, category_optional: bool) -> Iterator[pa.Table]:
    for raw in read_raw_tables(f, format, columns):
        if item_categories is not None:
            raw = _with_categories(raw, ray.get(item_categories))
        yield check_events(raw, path, keep_events, category_optional=category_optional)


def _with_categories(raw: pa.Table, item_categories: pa.Table) -> pa.Table:
    """``raw`` with each row's category looked up by item (null for items without one)."""
    index = pc.index_in(pc.cast(raw.column("item_id"), pa.string()), value_set=item_categories.column("item_id"))
    category = item_categories.column("category").take(index)
    if "category" in raw.column_names:
        return raw.set_column(raw.schema.get_field_index("category"), "category", category)
    return raw.append_column("category", category)


def read_item_categories(files: list[str], parse: Callable[[Any, str], Iterator[pa.Table]], what: str,
                         random_access: bool = False) -> pa.Table:
    """Every item with a category (``ITEM_CATEGORY_SCHEMA``) of an item table, read in parallel by Ray Data
    and collected on the driver (it is item-count sized); an item listed twice keeps its smallest category."""
    dataset = ray.data.read_datasource(_ParsedFiles(files, parse, random_access=random_access))
    table = pa.concat_tables(ray.get(dataset.to_arrow_refs()) or [ITEM_CATEGORY_SCHEMA.empty_table()])
    table = table.filter(pc.and_(table.column("item_id").is_valid(), table.column("category").is_valid()))
    table = table.group_by("item_id").aggregate([("category", "min")]).rename_columns(["item_id", "category"])
    if table.num_rows == 0:
        raise InputError(f"no item with a category in the {what} {', '.join(files)}")
    logger.info("%s: %d items with a category", what, table.num_rows)
    return table


def _amazon_meta_file(f, path: str) -> Iterator[pa.Table]:
    yield from read_amazon_meta_tables(f)


def _item_table_file(f, path: str, format: str, columns: dict[str, str], separator: str | None) -> Iterator[pa.Table]:
    yield from read_item_tables(f, format, columns, separator)


def _item_table(source: SourceConfig) -> pa.Table:
    files = expand_inputs(list(source.items))
    format = resolve_format(files, source.items_format)
    columns = source.item_columns.fields()
    check_input_columns(files, format, columns)
    parse = partial(_item_table_file, format=format, columns=columns, separator=source.category_separator)
    return read_item_categories(files, parse, "item table", random_access=format == "parquet")


def _synthetic_blocks(batch: dict[str, np.ndarray], config: SyntheticConfig,
                      keep_events: tuple[str, ...] | None) -> Iterator[pa.Table]:
    catalog = Catalog.build(config)
    for block in batch["id"]:
        yield check_events(generate_block(config, int(block), catalog), f"synthetic block {block}", keep_events)


def _parquet_file(f, path: str, columns: list[str] | None) -> Iterator[pa.Table]:
    for batch in pq.ParquetFile(f).iter_batches(batch_size=ROWS_PER_BLOCK, columns=columns):
        yield pa.Table.from_batches([batch])


def read_parquet_files(files: list[str], columns: list[str] | None = None) -> ray.data.Dataset:
    """Parquet files as a dataset, a read task per file group, each file streamed by row batches.

    Lighter than ``ray.data.read_parquet``, whose Ray 2.60 file listing starts a pool of footer-reading
    actors per call (seconds of process start-up on a small machine) to plan reads of remote storage.
    """
    return ray.data.read_datasource(_ParsedFiles(files, partial(_parquet_file, columns=columns), random_access=True))


def read_checked_events(source: SourceConfig) -> ray.data.Dataset:
    """Every input row with its outcome (``CHECKED_SCHEMA``), read in parallel."""
    if source.kind == "synthetic":
        config = source.synthetic
        logger.info("synthetic: %d users in %d generation blocks", config.n_users, config.n_blocks)
        return ray.data.range(config.n_blocks, override_num_blocks=config.n_blocks).map_batches(
            _synthetic_blocks, batch_size=1, batch_format="numpy",
            fn_kwargs={"config": config, "keep_events": source.keep_events})
    files = expand_inputs(list(source.inputs))
    item_categories: ray.ObjectRef | None = None
    if source.kind == "amazon":
        format, columns = "jsonl", AMAZON_REVIEW_COLUMNS.fields(category=False)
        meta = expand_inputs(list(source.meta))
        check_input_columns(meta, "jsonl", {"item": "asin"})
        item_categories = ray.put(read_item_categories(meta, _amazon_meta_file, "metadata"))
    else:
        format, columns = resolve_format(files, source.format), source.columns.fields(category=not source.items)
    check_input_columns(files, format, columns)
    if source.items:
        item_categories = ray.put(_item_table(source))
    logger.info("%s: %d %s files", source.kind, len(files), format)
    parse = partial(_checked_file, format=format, columns=columns, keep_events=source.keep_events,
                    item_categories=item_categories, category_optional=bool(source.items))
    unreadable = None if source.strict else partial(_unreadable_file, columns=columns,
                                                    category_optional=bool(source.items))
    return ray.data.read_datasource(_ParsedFiles(files, parse, random_access=format == "parquet",
                                                 unreadable=unreadable))


def _unreadable_file(path: str, message: str, columns: dict[str, str], category_optional: bool) -> pa.Table:
    """A file that failed mid-read, as one rejected row (``unreadable file``) whose record is the error."""
    raw = pa.table({**{name: pa.nulls(1, pa.string()) for name in columns},
                    "reject_reason": pa.array(["unreadable file"]), "record": pa.array([message[:MAX_RECORD_CHARS]])})
    return check_events(raw, path, category_optional=category_optional)
