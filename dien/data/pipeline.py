"""The prepare job: raw behavior logs to a DIEN dataset directory with Ray Data (see ``dataset_dir``).

Three Ray Data passes, none of which brings events to the driver:

1. read + check: every source row is parsed and checked in parallel read tasks; kept events are staged
   as Parquet (``<out>/staging/``, removed at the end), rejected rows go to ``<out>/rejects/``;
2. count: events per user and per (item, category) with ``groupby().count()``; only these vocabulary-
   sized tables are collected, to build the vocabularies (``dien.data.vocab.Vocabularies.from_counts``);
3. build: staged events are encoded, hash-partitioned by user group (``groupby().map_groups()``), and
   each group's users are time-sorted and turned into samples and latest histories by the same
   functions as the in-process ``build_local_dataset`` (``dien.data.samples.build_user_samples``);
   every random draw is seeded per user, so the samples do not depend on the partitioning; a datasink
   routes each row to its split (or to the user histories) as Parquet shards.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockAccessor
from ray.data.datasource import Datasink

from dien.data.dataset_dir import (
    MANIFEST_FILE,
    OUTPUTS,
    REJECTS_DIR,
    SAMPLE_ROW_GROUP_ROWS,
    SCHEMA_VERSION,
    USER_HISTORY_FILE,
    USER_HISTORY_SCHEMA,
    VOCAB_DIR,
    load_manifest,
)
from dien.data.events import FILTERED, KEPT, REJECT_SCHEMA, REJECTED, InputError
from dien.data.readers import SourceConfig, read_checked_events, read_parquet_files
from dien.data.samples import SAMPLE_SCHEMA, SPLITS, SampleConfig, build_user_samples
from dien.data.synthetic import RAW_EVENT_SCHEMA
from dien.data.vocab import RESERVED, Vocabularies

logger = logging.getLogger(__name__)

STAGING_DIR = "staging"
HISTORY = "history"
"""The ``split`` value of the rows that carry a user's latest history instead of a sample."""


@dataclass(frozen=True)
class PrepareConfig:
    out: str
    """The dataset directory to write (created; a previous dataset there is replaced)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)
    """Protocol, max_len, split fractions and the sampling seed."""
    min_count: int = 1
    """Items and categories seen fewer times map to the out-of-vocabulary id."""
    partitions: int | None = None
    """Shuffle partitions of the count and build passes; None: one per million events, at least the
    cluster's CPUs."""
    events_per_group: int = 100_000
    """Target events per user group (one ``build_user_samples`` call): larger amortizes per-call cost,
    smaller bounds a task's memory."""
    keep_staging: bool = False
    """Keep ``<out>/staging/`` (the checked events as Parquet) for inspection."""
    since: str | None = None
    """Use only events at or after this time: seconds since the epoch, or an ISO date or date and time (UTC
    unless it names a zone), e.g. 2018-09-01."""
    until: str | None = None
    """Use only events before this time (the same forms): with ``since``, one window of a log."""
    history_before_since: bool = False
    """With ``since``: the behaviors before it stay in the histories of the window's samples and in the user
    histories (only behaviors inside the window become targets), as serving sees them; False: the window is
    cut out alone, its first behaviors without a past."""
    reference: str | None = None
    """A prepared dataset whose vocabularies this one extends: its tokens keep their ids and new tokens get
    the ids after them (most frequent first), so a model trained on it can warm-start on this one."""

    def __post_init__(self) -> None:
        window = self.window()
        if window[0] is not None and window[1] is not None and window[0] >= window[1]:
            raise InputError(f"since ({self.since}) must be before until ({self.until})")
        if self.reference is not None and not (Path(self.reference) / VOCAB_DIR).is_dir():
            raise InputError(f"--reference {self.reference}: not a prepared dataset (it has no {VOCAB_DIR}/)")
        if self.min_count < 1:
            raise InputError("min_count must be >= 1")
        if self.partitions is not None and self.partitions < 1:
            raise InputError("partitions must be >= 1")
        if self.events_per_group < 1:
            raise InputError("events_per_group must be >= 1")


    def window(self) -> tuple[int | None, int | None]:
        """(since, until) in seconds since the epoch; None where open."""
        return (None if self.since is None else time_bound(self.since, "since"),
                None if self.until is None else time_bound(self.until, "until"))


def time_bound(value: str, what: str) -> int:
    """Seconds since the epoch of ``value``: an integer, or an ISO 8601 date or date and time (UTC when it names
    no zone)."""
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"{what} {value!r} is neither seconds since the epoch nor an ISO date "
                         "(2018-09-01, 2018-09-01T08:00:00+02:00)") from None
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp())


def _in_window(events: pa.Table, since: int | None, until: int | None) -> pa.Table:
    keep = pc.greater_equal(events.column("timestamp"), since) if since is not None else None
    if until is not None:
        before = pc.less(events.column("timestamp"), until)
        keep = before if keep is None else pc.and_(keep, before)
    return events.filter(keep)


@dataclass
class PrepareSummary:
    out: str
    events_read: int
    """Input rows, whatever became of them."""
    events_kept: int
    events_filtered: int
    """Rows of an event type that was not kept."""
    rejected: dict[str, int]
    """Rejected rows by reason."""
    users: int
    items: int
    """Distinct items kept in the vocabulary (reserved ids not included)."""
    categories: int
    samples: dict[str, int]
    """Rows per split."""
    seconds: float
    uncategorized: dict[str, int] = field(default_factory=dict)
    """``events`` and distinct ``items`` without a category: those an item table does not list."""
    events_in_window: int | None = None
    """Kept events inside ``since``/``until`` (with ``history_before_since``: all kept before ``until``, what the
    samples and histories are built from); None without a window."""

    @property
    def events_rejected(self) -> int:
        return sum(self.rejected.values())


@dataclass(frozen=True)
class _Route:
    directory: str | None
    """Where rows of this route go, relative to the root; None: only counted."""
    schema: pa.Schema | None = None
    columns: tuple[str, ...] | None = None
    """Input columns for the schema's fields, in order (default: the same names)."""
    row_group_rows: int | None = None
    """Rows per Parquet row group (None: pyarrow's default)."""
    shuffled: bool = False
    """Write each shard's rows in a random order (seeded by the write task), e.g. training samples, whose
    shards otherwise hold their users' samples one user after the other."""


class _RoutedParquetSink(Datasink):
    """Writes each row to the directory of its route (the value of ``route_column``), one Parquet shard per
    write task and route, and counts rows per route and per value of ``tally_column``."""

    def __init__(self, root: Path, route_column: str, routes: dict[str, _Route], tally_column: str | None = None):
        self.root, self.route_column, self.routes, self.tally_column = root, route_column, routes, tally_column
        self.rows: dict[str, int] = {}
        self.tally: dict[str, int] = {}
        for route in routes.values():
            if route.directory:
                (root / route.directory).mkdir(parents=True, exist_ok=True)

    def write(self, blocks: Iterable, ctx) -> dict[str, dict[str, int]]:
        tables = [BlockAccessor.for_block(block).to_arrow() for block in blocks]
        tables = [t for t in tables if t.num_rows]
        result: dict[str, dict[str, int]] = {"rows": {}, "tally": {}}
        if not tables:
            return result
        table = pa.concat_tables(tables, promote_options="default")
        route_values = table.column(self.route_column)
        unknown = set(pc.unique(route_values).to_pylist()) - set(self.routes)
        if unknown:
            raise ValueError(f"rows with unknown {self.route_column} {sorted(map(str, unknown))}")
        for value, route in self.routes.items():
            rows = table.filter(pc.equal(route_values, value))
            result["rows"][value] = rows.num_rows
            if route.directory is None or rows.num_rows == 0:
                continue
            columns = route.columns or tuple(route.schema.names)
            shard = pa.table([rows.column(c) for c in columns], schema=route.schema)
            if route.shuffled:
                shard = shard.take(np.random.default_rng(ctx.task_idx).permutation(shard.num_rows))
            # The task index names the shard: a retried task overwrites its own shard, never adds one.
            (self.root / route.directory).mkdir(parents=True, exist_ok=True)
            pq.write_table(shard, self.root / route.directory / f"part-{ctx.task_idx:05d}.parquet",
                           row_group_size=route.row_group_rows)
        if self.tally_column:
            counts = pc.value_counts(table.column(self.tally_column).drop_null())
            result["tally"] = {v.as_py(): c.as_py() for v, c in zip(counts.field("values"), counts.field("counts"))}
        return result

    def on_write_complete(self, write_result) -> None:
        for returned in write_result.write_returns:
            for target, values in ((self.rows, returned["rows"]), (self.tally, returned["tally"])):
                for key, count in values.items():
                    target[key] = target.get(key, 0) + count


def _collect(dataset: ray.data.Dataset) -> pa.Table:
    """A small dataset (vocabulary-sized) as one Arrow table on the driver."""
    return pa.concat_tables(ray.get(dataset.to_arrow_refs()), promote_options="default")


def _block_counts(events: pa.Table) -> pa.Table:
    """Events per user and per (item, category) within one block (``kind``, ``key``, ``category``, ``count``):
    combining inside blocks first leaves only vocabulary-sized tables to shuffle."""
    users = events.group_by("user_id").aggregate([("user_id", "count")])
    pairs = events.group_by(["item_id", "category"]).aggregate([("item_id", "count")])
    return pa.concat_tables([
        pa.table({"kind": pa.array(["user"] * users.num_rows, pa.string()), "key": users.column("user_id"),
                  "category": pa.array([""] * users.num_rows, pa.string()), "count": users.column("user_id_count")}),
        pa.table({"kind": pa.array(["item"] * pairs.num_rows, pa.string()), "key": pairs.column("item_id"),
                  "category": pairs.column("category"), "count": pairs.column("item_id_count")}),
    ])


def _count_pass(events: ray.data.Dataset, partitions: int, min_count: int
                ) -> tuple[Vocabularies, dict[str, int]] | None:
    """Vocabularies from counts aggregated in Ray Data (only the count tables reach the driver), and the
    events and items without a category (items an item table does not list); None when there are no events."""
    keys = ["kind", "key", "category"]
    counts = _collect(events.map_batches(_block_counts, batch_format="pyarrow")
                      .groupby(keys, num_partitions=partitions).sum("count"))
    if counts.num_rows == 0:
        return None
    counts = counts.rename_columns([*keys, "count"])
    users = counts.filter(pc.equal(counts.column("kind"), "user"))
    pairs = counts.filter(pc.equal(counts.column("kind"), "item"))
    uncategorized = pairs.filter(pairs.column("category").is_null())
    missing = {"events": int(pc.sum(uncategorized.column("count")).as_py() or 0),
               "items": len(set(uncategorized.column("key").to_pylist())
                            - set(pairs.filter(pairs.column("category").is_valid()).column("key").to_pylist()))}
    vocabularies = Vocabularies.from_counts(users.select(["key", "count"]).rename_columns(["user_id", "count"]),
                                            pairs.select(["key", "category", "count"]).rename_columns(
                                                ["item_id", "category", "count"]), min_count)
    return vocabularies, missing


def _encode_batch(batch: pa.Table, vocabularies: ray.ObjectRef, groups: int) -> pa.Table:
    """Events as ids, with the user's group (user id modulo ``groups``)."""
    encoded = ray.get(vocabularies).encode(batch)
    return encoded.append_column("group", pa.array(encoded.column("user").to_numpy() % groups, pa.int32()))


def _build_group(events: pa.Table, vocabularies: ray.ObjectRef, config: SampleConfig) -> pa.Table:
    """Samples (with ``split``) and latest-history rows (``split`` = history, with ``user_id``) of one group."""
    vocab = ray.get(vocabularies)
    samples, histories = build_user_samples(events, config, vocab.sampler())
    user_ids = vocab.user.tokens.take(pa.array(histories.column("user").to_numpy() - RESERVED))
    histories = histories.append_column("split", pa.array([HISTORY] * histories.num_rows, pa.string()))
    return pa.concat_tables([samples, histories.append_column("user_id", user_ids)], promote_options="default")


def _partitions(config: PrepareConfig, events: int) -> int:
    if config.partitions:
        return config.partitions
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(cpus, math.ceil(events / 1_000_000))


def _prepare_out(out: Path) -> None:
    """Make ``out`` ready: created if absent; a previous dataset's outputs removed; anything else refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST_FILE).exists():
            raise InputError(f"output directory {out} is not empty and holds no dataset ({MANIFEST_FILE}); "
                             "choose an empty or new directory")
        for name in (*OUTPUTS, STAGING_DIR):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _merge_shards(directory: Path, file: Path, schema: pa.Schema) -> int:
    """The shards of ``directory`` as one Parquet file, a shard at a time; returns the row count."""
    rows = 0
    with pq.ParquetWriter(file, schema) as writer:
        for shard in sorted(directory.glob("*.parquet")):
            table = pq.read_table(shard, schema=schema)
            writer.write_table(table)
            rows += table.num_rows
    return rows


def prepare(config: PrepareConfig) -> PrepareSummary:
    """Build the dataset directory ``config.out`` from ``config.source`` (Ray must be initialized).

    Raises :class:`InputError` (naming the file or column) when the input as a whole is unusable.
    """
    try:
        return _prepare(config)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, InputError):  # raised in a read task: keep the message, drop Ray's wrapping
            raise InputError(str(error.cause)) from None
        raise


def _prepare(config: PrepareConfig) -> PrepareSummary:
    started = time.perf_counter()
    out = Path(config.out).absolute()
    # The inputs are checked (files, columns, the item table) before the output directory is touched, so a
    # bad input leaves nothing behind that would block the next run.
    checked_events = read_checked_events(config.source)
    _prepare_out(out)
    staging = out / STAGING_DIR

    logger.info("pass 1/3: reading and checking the %s source", config.source.kind)
    stage_sink = _RoutedParquetSink(
        out, "outcome",
        {
            KEPT: _Route(f"{STAGING_DIR}/events", RAW_EVENT_SCHEMA),
            REJECTED: _Route(REJECTS_DIR, REJECT_SCHEMA, ("reject_reason", "source", "record")),
            FILTERED: _Route(None),
        },
        tally_column="reject_reason",
    )
    checked_events.write_datasink(stage_sink)
    kept, filtered = stage_sink.rows.get(KEPT, 0), stage_sink.rows.get(FILTERED, 0)
    read = kept + filtered + stage_sink.rows.get(REJECTED, 0)
    logger.info("read %d events: %d kept, %d filtered, %d rejected %s (%.1fs)", read, kept, filtered,
                read - kept - filtered, stage_sink.tally, time.perf_counter() - started)
    if kept == 0:
        inputs = f" {', '.join(config.source.inputs)}" if config.source.inputs else ""
        raise InputError(f"no usable events in the {config.source.kind} input{inputs}: {read} rows read, "
                         f"{filtered} of other event types, rejected {stage_sink.tally or 'none'}")

    partitions = _partitions(config, kept)
    events = read_parquet_files(sorted(str(p) for p in (staging / "events").glob("*.parquet")))
    since, until = config.window()
    first_event = None if config.history_before_since else since
    if first_event is not None or until is not None:
        events = events.map_batches(_in_window, batch_format="pyarrow",
                                    fn_kwargs={"since": first_event, "until": until})
    sample_config = replace(config.samples, targets_since=since) if config.history_before_since else config.samples
    logger.info("pass 2/3: counting users, items and categories (%d partitions)", partitions)
    counted = _count_pass(events, partitions, config.min_count)
    if counted is None:
        raise InputError(f"no events between since {config.since} and until {config.until}: all {kept} kept "
                         "events lie outside the window")
    vocabularies, uncategorized = counted
    in_window = int(vocabularies.user.counts.sum())
    if config.reference is not None:
        vocabularies = vocabularies.extending(Vocabularies.load(Path(config.reference) / VOCAB_DIR))
    sizes = vocabularies.sizes()
    logger.info("vocabularies: %s (%.1fs)", sizes, time.perf_counter() - started)
    if config.source.items:
        logger.info("item table: %d events of %d items it does not list get the out-of-vocabulary category",
                    uncategorized["events"], uncategorized["items"])
    if sizes["item"] - RESERVED < 2:
        raise InputError(f"negative sampling needs at least two distinct items; found {sizes['item'] - RESERVED} "
                         f"(min_count {config.min_count})")
    vocabularies.save(out / VOCAB_DIR)

    groups = max(partitions, math.ceil(kept / config.events_per_group))
    logger.info("pass 3/3: building %s samples in %d user groups", config.samples.protocol, groups)
    vocab_ref = ray.put(vocabularies)
    samples = (
        events.map_batches(_encode_batch, batch_format="pyarrow",
                           fn_kwargs={"vocabularies": vocab_ref, "groups": groups})
        .groupby("group", num_partitions=partitions)
        .map_groups(_build_group, batch_format="pyarrow",
                    fn_kwargs={"vocabularies": vocab_ref, "config": sample_config})
    )
    sample_sink = _RoutedParquetSink(
        out, "split",
        {**{split: _Route(split, SAMPLE_SCHEMA, row_group_rows=SAMPLE_ROW_GROUP_ROWS, shuffled=split == "train")
            for split in SPLITS},
         HISTORY: _Route(f"{STAGING_DIR}/user_history", USER_HISTORY_SCHEMA)},
    )
    samples.write_datasink(sample_sink)
    histories = _merge_shards(staging / "user_history", out / USER_HISTORY_FILE, USER_HISTORY_SCHEMA)
    if not config.keep_staging:
        shutil.rmtree(staging)

    summary = PrepareSummary(
        out=str(out),
        events_read=read,
        events_kept=kept,
        events_filtered=filtered,
        rejected=dict(sorted(stage_sink.tally.items())),
        users=sizes["user"] - RESERVED,
        items=sizes["item"] - RESERVED,
        categories=sizes["category"] - RESERVED,
        samples={split: sample_sink.rows.get(split, 0) for split in SPLITS},
        seconds=round(time.perf_counter() - started, 3),
        uncategorized=uncategorized,
        events_in_window=in_window if since is not None or until is not None else None,
    )
    _write_manifest(out, config, summary, sizes, histories)
    logger.info("wrote %s: %s samples (%.1fs)", out, summary.samples, summary.seconds)
    return summary


def _write_manifest(out: Path, config: PrepareConfig, summary: PrepareSummary, sizes: dict[str, int],
                    histories: int) -> None:
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": config.source.describe(),
        "protocol": config.samples.protocol,
        "max_len": config.samples.max_len,
        "seed": config.samples.seed,
        "min_count": config.min_count,
        "sample_config": asdict(config.samples),
        "counts": summary.samples,
        "events": {"read": summary.events_read, "kept": summary.events_kept, "filtered": summary.events_filtered,
                   "rejected": summary.events_rejected},
        "rejected": summary.rejected,
        "uncategorized": summary.uncategorized,
        "users": summary.users,
        "user_histories": histories,
        "vocab_sizes": sizes,
        "n_users": sizes["user"],
        "n_items": sizes["item"],
        "n_cats": sizes["category"],
        "files": {**{split: split for split in SPLITS}, "vocab": VOCAB_DIR, "rejects": REJECTS_DIR,
                  "user_history": USER_HISTORY_FILE},
        "seconds": summary.seconds,
    }
    if summary.events_in_window is not None:
        since, until = config.window()
        manifest["window"] = {"since": since, "until": until, "events": summary.events_in_window,
                              **({"history_before_since": True} if config.history_before_since else {})}
    if config.reference is not None:
        reference = load_manifest(config.reference)
        manifest["reference"] = {"path": str(Path(config.reference).resolve()), "created": reference.get("created"),
                                 "vocab_sizes": reference["vocab_sizes"]}
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to the manifest")
