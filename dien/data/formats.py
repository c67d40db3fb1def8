"""Input files: finding them, telling their format, and parsing them as streams of raw event tables.

Pure Arrow and Python (no Ray): ``dien.data.readers`` runs these inside Ray Data read tasks, and the
driver uses :func:`expand_inputs` and :func:`check_input_columns` to fail early, naming the file or
column, before any task starts.

A raw table has the normalized field names of :class:`~dien.data.events.ColumnMapping` and the input's
types; a row the parser could not read at all carries a ``reject_reason`` and its text as ``record``.
"""
from __future__ import annotations

import ast
import glob
import gzip
import io
import json
import os
from typing import Any, BinaryIO, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from dien.data.events import MAX_RECORD_CHARS, ColumnMapping, InputError

FORMATS = ("csv", "tsv", "parquet", "jsonl")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
               ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
ROWS_PER_BLOCK = 100_000
"""Rows per parsed table: a file is parsed as a stream of tables this size, never whole."""


def is_gzip(path: str) -> bool:
    return path.endswith(".gz")


def infer_format(path: str) -> str:
    """The format named by a file's extension (``.gz`` ignored)."""
    stem = path[:-3] if is_gzip(path) else path
    extension = os.path.splitext(stem)[1].lower()
    if extension not in _EXTENSIONS:
        raise InputError(f"cannot tell the format of {path} from its extension; pass --format "
                         f"({', '.join(FORMATS)})")
    return _EXTENSIONS[extension]


def expand_inputs(paths: list[str]) -> list[str]:
    """Files named by ``paths`` (files, directories searched recursively, glob patterns), sorted.

    Names starting with ``.`` or ``_`` inside directories are skipped (markers such as ``_SUCCESS``).
    """
    if not paths:
        raise InputError("no input given")
    files: list[str] = []
    for path in paths:
        matches = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
        if not matches:
            raise InputError(f"no file matches {path}")
        for match in matches:
            if os.path.isdir(match):
                found = sorted(
                    os.path.join(root, name)
                    for root, dirs, names in os.walk(match)
                    if not any(part.startswith((".", "_")) for part in os.path.relpath(root, match).split(os.sep)
                               if part != ".")
                    for name in names
                    if not name.startswith((".", "_"))
                )
                if not found:
                    raise InputError(f"input directory {match} holds no files")
                files.extend(found)
            elif os.path.isfile(match):
                files.append(match)
            else:
                raise InputError(f"input file {match} does not exist")
    for path in files:
        if not os.access(path, os.R_OK):
            raise InputError(f"input file {path} is not readable")
    return [os.path.abspath(p) for p in files]


def resolve_format(files: list[str], format: str | None) -> str:
    """The one format of all ``files``: ``format`` if given, else their common extension."""
    if format is not None:
        if format not in FORMATS:
            raise InputError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
        return format
    formats = {path: infer_format(path) for path in files}
    if len(set(formats.values())) > 1:
        raise InputError(f"inputs mix formats ({', '.join(sorted(set(formats.values())))}); pass one --format "
                         "and inputs of that format")
    return next(iter(formats.values()))


def open_text(path: str) -> BinaryIO:
    """A file opened for reading, gunzipped when it ends in ``.gz``."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def parse_record(line: str) -> Any:
    """A JSON value, or a Python literal (old Amazon metadata dumps are written with ``repr``)."""
    try:
        return json.loads(line)
    except ValueError:
        return ast.literal_eval(line)


FIRST_RECORD_LINES = 1_000
"""Lines searched for a file's first JSON object (a malformed first line is rejected later, not fatal)."""


def _first_record_keys(path: str) -> set[str]:
    """The keys of the first JSON object among a file's first :data:`FIRST_RECORD_LINES` lines."""
    seen = 0
    with open_text(path) as f:
        for raw_line in f:
            line = raw_line.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            seen += 1
            try:
                record = parse_record(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                record = None
            if isinstance(record, dict):
                return set(record)
            if seen == FIRST_RECORD_LINES:
                raise InputError(f"{path}: no JSON object among its first {FIRST_RECORD_LINES} lines")
    return set()


def input_columns(path: str, format: str) -> set[str] | None:
    """Column names of a file (a JSON lines file: its first record's keys); None if it holds no rows."""
    try:
        if format == "parquet":
            return set(pq.read_schema(path).names)
        if format == "jsonl":
            return _first_record_keys(path) or None
        with open_text(path) as f:
            header = f.readline().decode("utf-8", errors="replace").removeprefix("\ufeff").rstrip("\r\n")
        if not header:
            return None
        delimiter = "\t" if format == "tsv" else ","
        return {name.strip().strip('"') for name in header.split(delimiter)}
    except InputError:
        raise
    except (OSError, EOFError, pa.ArrowException) as error:
        raise InputError(f"cannot read {path} as {format}: {error}") from None


def check_input_columns(files: list[str], format: str, columns: dict[str, str]) -> None:
    """Fail, naming the column and file, when one of ``columns`` (field -> input column) is absent."""
    for path in files:
        present = input_columns(path, format)
        if present is None:
            continue
        for field, column in columns.items():
            if column not in present:
                raise InputError(f"column {column!r} (for {field}) is missing in {path}; "
                                 f"it has {', '.join(sorted(present))}")


MAX_LINE_BYTES = 1 << 20
"""A CSV/TSV line longer than this is rejected (``line too long``) instead of stalling the parser."""


class _RawReader(io.RawIOBase):
    """Any stream with ``read(n)`` (Arrow's input streams have no ``readline``) as a raw file to buffer."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._f.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _screened_lines(f: BinaryIO) -> Iterator[tuple[bytes | None, str | None, str]]:
    """Each line of a CSV/TSV stream as (the line, or None when it is rejected; the reason; its text).

    The screen keeps one bad line from costing more than itself: invalid UTF-8 and binary bytes, an
    over-long line and an unterminated quote (values may not span lines) are rejected on their own line, so
    the parser never sees them and cannot swallow the good lines after them. A UTF-8 byte-order mark is dropped.
    """
    first = True
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # the rest of the long line
                line = f.readline(MAX_LINE_BYTES)
            yield None, "line too long", f"(a line over {MAX_LINE_BYTES} bytes)"
            continue
        if first and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        first = False
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            yield None, "invalid UTF-8", line.decode("utf-8", errors="replace").rstrip("\r\n")
            continue
        if "\x00" in text:
            yield None, "binary data", text.rstrip("\r\n").replace("\x00", "\\x00")
        elif text.count('"') % 2:
            yield None, "unterminated quote", text.rstrip("\r\n")
        elif text.strip():
            yield line if line.endswith(b"\n") else line + b"\n", None, ""


def _csv_tables(f: BinaryIO, format: str, columns: dict[str, str]) -> Iterator[pa.Table]:
    """Raw tables of a CSV/TSV stream, :data:`ROWS_PER_BLOCK` lines at a time: the header, then each block
    of screened lines (:func:`_screened_lines`) parsed by Arrow; a row Arrow cannot read, or a screened-out
    line, becomes a rejected row with its reason. An empty file has no rows."""
    lines = _screened_lines(io.BufferedReader(_RawReader(f), buffer_size=1 << 20))
    header = next((line for line, _, _ in lines if line is not None), None)
    if header is None:
        return
    schema = pa.schema([(c, pa.string()) for c in columns])
    malformed: list[str] = []

    def skip_malformed(row: Any) -> str:
        malformed.append(row.text)
        return "skip"

    def parse(block: list[bytes], rejected: list[tuple[str, str]]) -> pa.Table:
        tables = []
        if block:
            table = pa_csv.read_csv(
                io.BytesIO(header + b"".join(block)),
                parse_options=pa_csv.ParseOptions(delimiter="\t" if format == "tsv" else ",",
                                                  invalid_row_handler=skip_malformed),
                convert_options=pa_csv.ConvertOptions(include_columns=list(columns.values()),
                                                      column_types={c: pa.string() for c in columns.values()}))
            tables.append(table.select(list(columns.values())).rename_columns(list(columns)))
        reasons = [("malformed row", text) for text in malformed] + rejected
        malformed.clear()
        for reason in sorted({r for r, _ in reasons}):
            tables.append(_unreadable_rows([t for r, t in reasons if r == reason], reason, schema))
        return pa.concat_tables(tables, promote_options="default")

    block: list[bytes] = []
    rejected: list[tuple[str, str]] = []
    for line, reason, text in lines:
        if line is None:
            rejected.append((reason, text))
        else:
            block.append(line)
        if len(block) + len(rejected) >= ROWS_PER_BLOCK:
            yield parse(block, rejected)
            block, rejected = [], []
    if block or rejected:
        yield parse(block, rejected)


def _unreadable_rows(texts: list[str], reason: str, schema: pa.Schema) -> pa.Table:
    n = len(texts)
    columns = {field.name: pa.nulls(n, field.type) for field in schema if field.name not in ("reject_reason", "record")}
    return pa.table({**columns, "reject_reason": pa.array([reason] * n, pa.string()),
                     "record": pa.array([t[:MAX_RECORD_CHARS] for t in texts], pa.string())})


def _parquet_tables(f: BinaryIO, columns: dict[str, str]) -> Iterator[pa.Table]:
    for batch in pq.ParquetFile(f).iter_batches(batch_size=ROWS_PER_BLOCK, columns=list(columns.values())):
        yield pa.Table.from_batches([batch]).rename_columns(list(columns))


def _json_value(value: Any, field: str) -> tuple[str | None, str | None]:
    """(the value as text, or None if absent; the reason it is unusable, or None)."""
    if value is None:
        return None, None
    if isinstance(value, bool):
        return None, f"wrong type {field}"
    if isinstance(value, str):
        return value, None
    if isinstance(value, int):
        return str(value), None
    if field == "timestamp" and isinstance(value, float) and value.is_integer():
        return str(int(value)), None
    return None, f"wrong type {field}"


def parse_json_records(lines: list[str], columns: dict[str, str]) -> pa.Table:
    """A raw table (string columns, normalized field -> input column in ``columns``) from JSON (or
    Python-literal) object lines."""
    values: dict[str, list] = {field: [] for field in columns}
    reasons: list[str | None] = []
    records: list[str | None] = []
    for line in lines:
        try:
            record = parse_record(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            record = None
        reason = None if isinstance(record, dict) else "malformed record"
        for field, column in columns.items():
            text, problem = _json_value(record.get(column), field) if reason is None else (None, None)
            values[field].append(text)
            reason = reason or problem
        reasons.append(reason)
        records.append(line[:MAX_RECORD_CHARS] if reason else None)
    return pa.table({**{f: pa.array(v, pa.string()) for f, v in values.items()},
                     "reject_reason": pa.array(reasons, pa.string()), "record": pa.array(records, pa.string())})


def _lines(f: BinaryIO, size: int = ROWS_PER_BLOCK) -> Iterator[list[str]]:
    """Non-blank lines of a byte stream, in lists of ``size``."""
    chunk: list[str] = []
    for raw_line in io.TextIOWrapper(f, encoding="utf-8", errors="replace"):
        line = raw_line.strip()
        if line:
            chunk.append(line)
            if len(chunk) == size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def read_raw_tables(f: BinaryIO, format: str, columns: dict[str, str]) -> Iterator[pa.Table]:
    """Raw tables of one (already decompressed) file, a block at a time: the input columns of ``columns``
    (normalized field -> input column) under the field names."""
    if format in ("csv", "tsv"):
        yield from _csv_tables(f, format, columns)
    elif format == "parquet":
        yield from _parquet_tables(f, columns)
    elif format == "jsonl":
        for lines in _lines(f):
            yield parse_json_records(lines, columns)
    else:
        raise InputError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")


AMAZON_REVIEW_COLUMNS = ColumnMapping(user_id="reviewerID", item_id="asin", category="category",
                                      timestamp="unixReviewTime")
"""Amazon reviews (McAuley et al.): the category is not in the review but joined from the metadata."""
ITEM_CATEGORY_SCHEMA = pa.schema([("item_id", pa.string()), ("category", pa.string())])
"""An item table as the readers join it to events: each item's category (null: none given)."""


def amazon_category(record: dict) -> str | None:
    """The last level of the item's first category path (2014 dumps: ``categories``, a list of paths;
    2018 dumps: ``category``, one path)."""
    paths = record.get("categories")
    path = paths[0] if isinstance(paths, list) and paths and isinstance(paths[0], list) else record.get("category")
    if isinstance(path, list) and path and isinstance(path[-1], str) and path[-1].strip():
        return path[-1]
    return None


def parse_amazon_meta(lines: list[str]) -> pa.Table:
    """(item_id, category) of metadata lines (``ITEM_CATEGORY_SCHEMA``, the item being the ``asin``); a line
    without either gets nulls."""
    asins, categories = [], []
    for line in lines:
        try:
            record = parse_record(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            record = None
        ok = isinstance(record, dict) and isinstance(record.get("asin"), str)
        asins.append(record["asin"] if ok else None)
        categories.append(amazon_category(record) if ok else None)
    return pa.table({"item_id": pa.array(asins, pa.string()), "category": pa.array(categories, pa.string())},
                    schema=ITEM_CATEGORY_SCHEMA)


def read_amazon_meta_tables(f: BinaryIO) -> Iterator[pa.Table]:
    for lines in _lines(f):
        yield parse_amazon_meta(lines)


def first_category(categories: pa.Array | pa.ChunkedArray, separator: str | None) -> pa.Array:
    """The first of each multi-valued category (``"A|B|C"`` -> ``"A"`` for separator ``"|"``), trimmed;
    blank values become null. ``separator=None`` keeps each value whole."""
    if separator:
        categories = pc.list_element(pc.split_pattern(categories, separator, max_splits=1), 0)
    categories = pc.utf8_trim_whitespace(categories)
    return pc.if_else(pc.equal(categories, ""), None, categories)


def read_item_tables(f: BinaryIO, format: str, columns: dict[str, str], separator: str | None) -> Iterator[pa.Table]:
    """An item table file as ``ITEM_CATEGORY_SCHEMA`` tables (rows the parser could not read are dropped:
    an item table has no rejects of its own; its items are then missing, and counted so)."""
    for raw in read_raw_tables(f, format, columns):
        if "reject_reason" in raw.column_names:
            raw = raw.filter(raw.column("reject_reason").is_null())
        items = pc.cast(raw.column("item_id"), pa.string())
        categories = first_category(pc.cast(raw.column("category"), pa.string()), separator)
        yield pa.table({"item_id": items, "category": categories}, schema=ITEM_CATEGORY_SCHEMA)
