"""Validation and normalization of raw event rows into the raw-event schema (pure Arrow, no Ray).

Every reader turns its input into *raw* tables whose columns carry the normalized names (``user_id``,
``item_id``, ``category``, ``timestamp``, optionally ``event_type``) but still the input's types (strings
from CSV and JSON lines, anything from Parquet). :func:`check_events` decides each row's outcome:

- ``kept``: every field is present and parses; the normalized values follow ``RAW_EVENT_SCHEMA``;
- ``filtered``: its event type is not one of the kept ones (not an error, only counted);
- ``rejected``: a field is missing, unparsable or of the wrong type; ``reject_reason`` says which, and
  ``record`` holds the input values so the row can be found and fixed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dien.data.synthetic import RAW_EVENT_SCHEMA

ID_FIELDS = ("user_id", "item_id", "category")
REQUIRED_FIELDS = (*ID_FIELDS, "timestamp")
KEPT, FILTERED, REJECTED = "kept", "filtered", "rejected"

CHECKED_SCHEMA = RAW_EVENT_SCHEMA.append(pa.field("outcome", pa.string())).append(
    pa.field("reject_reason", pa.string())).append(pa.field("source", pa.string())).append(
    pa.field("record", pa.string()))
"""Raw events plus each row's outcome; ``reject_reason``, ``source`` and ``record`` are set on rejected rows."""

REJECT_SCHEMA = pa.schema([("reason", pa.string()), ("source", pa.string()), ("record", pa.string())])
"""A rejected row in ``<dataset>/rejects/``: why, which input file, and the row's input values as JSON."""

MAX_RECORD_CHARS = 2_000
"""Longer input records are truncated in rejects (Amazon reviews carry the review text)."""


class InputError(ValueError):
    """The input as a whole cannot be used: a missing file or column, an unreadable file, no events."""


@dataclass(frozen=True)
class ColumnMapping:
    """Which input column holds each raw-event field."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    category: str = "category"
    timestamp: str = "timestamp"
    event_type: str | None = None
    """Optional: the event type column (needed to filter events by type)."""

    SHORT_NAMES = {"user": "user_id", "item": "item_id", "category": "category", "cat": "category",
                   "timestamp": "timestamp", "time": "timestamp", "event_type": "event_type", "event": "event_type"}

    @classmethod
    def parse(cls, text: str | None) -> "ColumnMapping":
        """From ``"user=uid,item=sku,category=cat,timestamp=ts[,event_type=kind]"``; unnamed fields keep
        their default column names."""
        return cls(**parse_column_pairs(text, cls.SHORT_NAMES))

    def fields(self, category: bool = True) -> dict[str, str]:
        """Normalized field name -> input column name, for the fields this mapping reads (``category=False``:
        all but the category, which an item table gives instead)."""
        names = {f: getattr(self, f) for f in REQUIRED_FIELDS if category or f != "category"}
        if self.event_type:
            names["event_type"] = self.event_type
        return names


@dataclass(frozen=True)
class ItemColumns:
    """Which column of an item table holds the item and which its category."""

    item_id: str = "item_id"
    category: str = "category"

    SHORT_NAMES = {"item": "item_id", "category": "category", "cat": "category"}

    @classmethod
    def parse(cls, text: str | None) -> "ItemColumns":
        """From ``"item=movieId,category=genres"``; unnamed fields keep their default column names."""
        return cls(**parse_column_pairs(text, cls.SHORT_NAMES))

    def fields(self) -> dict[str, str]:
        return {"item_id": self.item_id, "category": self.category}


def parse_column_pairs(text: str | None, short_names: dict[str, str]) -> dict[str, str]:
    """``"field=column,..."`` as {normalized field: column}; fields by their short names."""
    mapping: dict[str, str] = {}
    for part in (text.split(",") if text else []):
        field, sep, column = (s.strip() for s in part.partition("="))
        if not sep or not column or field not in short_names:
            raise InputError(f"bad column mapping {part!r}: expected FIELD=COLUMN with FIELD one of "
                             f"{', '.join(sorted(set(short_names)))}")
        mapping[short_names[field]] = column
    return mapping


def parse_iso_timestamp(text: str) -> int | None:
    """Seconds since the epoch of an ISO 8601 date or datetime (naive ones are UTC), None if unparsable."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def _timestamps(column: pa.Array, source: str) -> tuple[pa.Array, pa.Array]:
    """(int64 seconds, null where missing or unparsable; bool: present but unparsable)."""
    kind = column.type
    present = column.is_valid()
    never = pa.array(np.zeros(len(column), bool))
    if pa.types.is_integer(kind):
        return pc.cast(column, pa.int64()), never
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        seconds = pc.cast(column, pa.timestamp("s", tz=getattr(kind, "tz", None)), safe=False)  # drops sub-seconds
        return pc.cast(seconds, pa.int64()), never
    if pa.types.is_floating(kind):
        integral = pc.fill_null(pc.and_(pc.is_finite(column), pc.equal(pc.floor(column), column)), False)
        return pc.cast(pc.if_else(integral, column, None), pa.int64()), pc.and_(present, pc.invert(integral))
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"column for timestamp has type {kind} in {source}: expected integers, strings or timestamps")
    text = pc.utf8_trim_whitespace(column)
    text = pc.if_else(pc.equal(text, ""), None, text)
    is_integer = pc.fill_null(pc.match_substring_regex(text, r"^[+-]?\d{1,18}$"), False)
    seconds = pc.fill_null(pc.cast(pc.if_else(is_integer, text, None), pa.int64()), 0).to_numpy().copy()
    valid = is_integer.to_numpy(zero_copy_only=False).copy()
    others = np.flatnonzero(~valid & text.is_valid().to_numpy(zero_copy_only=False))
    for index, value in zip(others, text.take(pa.array(others, pa.int64())).to_pylist()):
        parsed = parse_iso_timestamp(value)
        if parsed is not None:
            seconds[index], valid[index] = parsed, True
    bad = pc.and_(text.is_valid(), pa.array(~valid))
    return pa.array(seconds, pa.int64(), mask=~valid), bad


def _identifiers(column: pa.Array, field: str, source: str) -> pa.Array:
    """Strings with nulls where missing (null or blank); integer ids become their decimal text."""
    kind = column.type
    if pa.types.is_integer(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        column = pc.cast(column, pa.string())
    elif not pa.types.is_string(column.type):
        raise InputError(f"column for {field} has type {kind} in {source}: expected strings or integers")
    return pc.if_else(pc.equal(pc.utf8_trim_whitespace(column), ""), None, column)


def check_events(raw: pa.Table, source: str, keep_events: Iterable[str] | None = None,
                 category_optional: bool = False) -> pa.Table:
    """Each raw row with its outcome (``CHECKED_SCHEMA``), in input order.

    ``raw`` has the required fields under their normalized names, optionally ``event_type``, and
    optionally ``reject_reason`` (a problem the reader already found, e.g. a malformed line or a value
    of the wrong type; it takes precedence and is never filtered away) and ``record`` (the input text to
    report for a rejected row; by default the row's values as JSON).
    ``keep_events``: event types to keep; other rows (also those without a type) are ``filtered``
    before their fields are checked.
    ``category_optional``: a missing category is kept as null (it encodes as out-of-vocabulary) instead of
    rejecting the row: the category comes from an item table that does not list every item.
    """
    names = raw.column_names
    for field in REQUIRED_FIELDS:
        if field not in names:
            raise InputError(f"no column for {field} in {source}")
    raw = raw.combine_chunks()
    n = raw.num_rows

    def column(name: str) -> pa.Array:
        return raw.column(name).chunk(0) if raw.column(name).num_chunks else pa.nulls(0, raw.schema.field(name).type)

    values = {field: _identifiers(column(field), field, source) for field in ID_FIELDS}
    values["timestamp"], bad_timestamp = _timestamps(column("timestamp"), source)
    event_type = _identifiers(column("event_type"), "event_type", source) if "event_type" in names \
        else pa.nulls(n, pa.string())

    preset = pc.cast(column("reject_reason"), pa.string()) if "reject_reason" in names else pa.nulls(n, pa.string())
    kept_type = pa.array(np.ones(n, bool))
    if keep_events is not None:
        kept_type = pc.fill_null(pc.is_in(event_type, value_set=pa.array(list(keep_events), pa.string())), False)
    reason = pc.if_else(pc.or_(preset.is_valid(), kept_type), preset, None)
    for field in REQUIRED_FIELDS:
        if field == "category" and category_optional:
            continue
        problems = [("bad timestamp", bad_timestamp)] if field == "timestamp" else []
        problems.append((f"missing {field}", values[field].is_null()))
        for text, mask in problems:
            reason = pc.if_else(pc.and_(pc.and_(reason.is_null(), kept_type), mask), text, reason)
    rejected = reason.is_valid()
    outcome = pc.if_else(rejected, REJECTED, pc.if_else(kept_type, KEPT, FILTERED))

    rejected_rows = pc.indices_nonzero(rejected)
    record = pa.nulls(n, pa.string())
    if len(rejected_rows):
        given = column("record").take(rejected_rows).to_pylist() if "record" in names else [None] * len(rejected_rows)
        inputs = raw.select([c for c in (*REQUIRED_FIELDS, "event_type") if c in names]).take(rejected_rows).to_pylist()
        texts = [(text if text is not None else json.dumps(row, default=str))[:MAX_RECORD_CHARS]
                 for text, row in zip(given, inputs)]
        positions = np.full(n, -1, np.int64)
        positions[rejected_rows.to_numpy()] = np.arange(len(texts))
        record = pa.array(texts, pa.string()).take(pa.array(positions, mask=positions < 0))
    return pa.table(
        {
            **values,
            "event_type": event_type,
            "outcome": outcome,
            "reject_reason": reason,
            "source": pc.if_else(rejected, source, None),
            "record": record,
        },
        schema=CHECKED_SCHEMA,
    )
