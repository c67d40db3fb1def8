"""The Ray Data prepare pipeline end to end: readers, rejects, errors, protocols, outputs, determinism.

Uses the session-wide ``ray_session`` fixture of conftest.py (one Ray per test session).
"""
import gzip
import importlib.util
import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import ray

from dien.data.dataset_dir import DatasetDir
from dien.data.events import ColumnMapping, InputError, ItemColumns
from dien.data.local import build_local_dataset
from dien.data.pipeline import PrepareConfig, prepare
from dien.data.readers import SourceConfig, read_checked_events
from dien.data.samples import SAMPLE_SCHEMA, SPLITS, SampleConfig
from dien.data.synthetic import RAW_EVENT_SCHEMA, SyntheticConfig, generate
from dien.data.vocab import OUT_OF_VOCABULARY, PADDING, Vocabularies

SORT_KEYS = [(c, "ascending") for c in ("user", "timestamp", "label", "target_item")]
COLUMNS = ColumnMapping(user_id="uid", item_id="sku", category="cat", timestamp="ts", event_type="kind")
PAPER = SyntheticConfig(n_users=2000, n_items=300, n_categories=20, min_events=3, max_events=30, block_size=400,
                        seed=11)
SLIDING = SyntheticConfig(n_users=300, n_items=100, n_categories=10, min_events=3, max_events=12, block_size=100,
                          seed=5)


def run(tmp_path, name="out", partitions=2, **kwargs) -> DatasetDir:
    prepare(PrepareConfig(out=str(tmp_path / name), partitions=partitions, **kwargs))
    return DatasetDir(tmp_path / name)


def sorted_split(dataset: DatasetDir, split: str) -> pa.Table:
    return dataset.read_split(split).sort_by(SORT_KEYS)


@pytest.fixture(scope="module")
def paper_dir(ray_session, tmp_path_factory):
    return run(tmp_path_factory.mktemp("paper"), source=SourceConfig(synthetic=PAPER),
               samples=SampleConfig(max_len=20, seed=4))


@pytest.fixture(scope="module")
def sliding_dir(ray_session, tmp_path_factory):
    return run(tmp_path_factory.mktemp("sliding"), source=SourceConfig(synthetic=SLIDING),
               samples=SampleConfig(protocol="sliding", max_len=5, seed=1), events_per_group=500)


# ---------------------------------------------------------------- synthetic source, both protocols


@pytest.mark.parametrize("protocol", ["paper", "sliding"])
def test_ray_samples_equal_the_in_process_samples(protocol, paper_dir, sliding_dir):
    dataset, events, config = ((paper_dir, PAPER, SampleConfig(max_len=20, seed=4)) if protocol == "paper" else
                               (sliding_dir, SLIDING, SampleConfig(protocol="sliding", max_len=5, seed=1)))
    local = build_local_dataset(generate(events), config)
    for split in SPLITS:
        assert sorted_split(dataset, split).equals(local.splits[split].sort_by(SORT_KEYS)), split
    history = dataset.user_history().sort_by("user")
    assert history.drop_columns(["user_id"]).equals(local.user_history.sort_by("user"))
    assert history.column("user_id").to_pylist() == local.vocabularies.user.lookup(history.column("user").to_numpy())


def test_samples_do_not_depend_on_parallelism(sliding_dir, tmp_path):
    settings = {"source": SourceConfig(synthetic=SLIDING), "samples": SampleConfig(protocol="sliding", max_len=5, seed=1)}
    narrow = run(tmp_path, "narrow", partitions=1, events_per_group=10**9, **settings)
    wide = run(tmp_path, "wide", partitions=5, events_per_group=97, **settings)
    for split in SPLITS:
        assert sorted_split(narrow, split).equals(sorted_split(sliding_dir, split))
        assert sorted_split(wide, split).equals(sorted_split(sliding_dir, split))
    assert len(wide.split_files("train")) > len(narrow.split_files("train"))


def test_histories_are_strictly_earlier_than_targets_and_negatives_differ(sliding_dir):
    events = generate(SLIDING)
    vocab = sliding_dir.vocabularies()
    encoded = vocab.encode(events)
    timeline = {}
    for u, i, t in zip(*(encoded.column(c).to_pylist() for c in ("user", "item", "timestamp"))):
        timeline.setdefault(u, []).append((t, i))
    for split in SPLITS:
        table = sliding_dir.read_split(split)
        for row in table.to_pylist():
            assert row["hist_item"] == [i for t, i in sorted(timeline[row["user"]]) if t < row["timestamp"]][-5:]
            assert all(n != h for n, h in zip(row["neg_hist_item"], row["hist_item"]))
            assert len(row["neg_hist_item"]) == len(row["hist_item"]) == len(row["hist_cat"]) <= 5
        pairs = {}
        for row in table.select(["user", "timestamp", "label", "target_item"]).to_pylist():
            pairs.setdefault((row["user"], row["timestamp"]), {})[row["label"]] = row["target_item"]
        assert all(sorted(p) == [0, 1] and p[0] != p[1] for p in pairs.values())


def test_sliding_valid_and_test_targets_follow_each_users_train_targets(sliding_dir):
    train = sliding_dir.read_split("train").group_by("user").aggregate([("timestamp", "max")])
    latest = dict(zip(train.column("user").to_pylist(), train.column("timestamp_max").to_pylist()))
    for split in ("valid", "test"):
        table = sliding_dir.read_split(split)
        assert table.num_rows > 0
        assert all(t > latest.get(u, -1) for u, t in zip(table.column("user").to_pylist(),
                                                          table.column("timestamp").to_pylist()))


def test_paper_protocol_one_positive_and_one_negative_per_user_split_by_user(paper_dir):
    rows = pa.concat_tables([paper_dir.read_split(s, ["user", "label"]).append_column(
        "split", pa.array([s] * paper_dir.manifest["counts"][s])) for s in SPLITS])
    per_user = rows.group_by("user").aggregate([("label", "sum"), ("label", "count"), ("split", "count_distinct")])
    assert per_user.num_rows == PAPER.n_users
    assert set(per_user.column("label_sum").to_pylist()) == {1}
    assert set(per_user.column("label_count").to_pylist()) == {2}
    assert set(per_user.column("split_count_distinct").to_pylist()) == {1}
    test_share = paper_dir.manifest["counts"]["test"] / 2 / PAPER.n_users
    assert 0.08 < test_share < 0.12


def test_outputs_match_the_manifest(paper_dir):
    manifest = paper_dir.manifest
    for split in SPLITS:
        assert sum(pq.read_metadata(f).num_rows for f in paper_dir.split_files(split)) == manifest["counts"][split]
        assert paper_dir.read_split(split).schema.equals(SAMPLE_SCHEMA)
    assert paper_dir.ray_split("valid").count() == manifest["counts"]["valid"]
    vocab = paper_dir.vocabularies()
    assert manifest["n_items"] == len(vocab.item) == paper_dir.n_items
    assert manifest["n_cats"] == len(vocab.category) == paper_dir.n_cats
    assert manifest["vocab_sizes"] == vocab.sizes()
    assert manifest["events"] == {"read": generate(PAPER).num_rows, "kept": generate(PAPER).num_rows,
                                  "filtered": 0, "rejected": 0}
    assert manifest["protocol"] == "paper" and manifest["max_len"] == 20 and manifest["seed"] == 4
    assert paper_dir.user_history().num_rows == manifest["user_histories"] == PAPER.n_users


def test_vocabulary_ids_reserve_padding_and_oov(paper_dir):
    vocab = paper_dir.vocabularies()
    assert vocab.item.encode(pa.array(["never seen", None])).tolist() == [OUT_OF_VOCABULARY] * 2
    assert vocab.item.encode(vocab.item.tokens).tolist() == list(range(2, len(vocab.item)))
    assert np.all(np.diff(vocab.item.counts) <= 0)
    assert vocab.item_category[PADDING] == vocab.item_category[OUT_OF_VOCABULARY] == 0
    train = paper_dir.read_split("train")
    for column in ("target_item", "target_cat"):
        assert pc.min(train.column(column)).as_py() >= 2
    assert pc.min(pc.list_flatten(train.column("hist_item"))).as_py() >= 2


# ---------------------------------------------------------------- generic event logs


def event_rows(n_users=8, per_user=5):
    rng = np.random.default_rng(0)
    return [{"uid": f"u{u}", "sku": f"i{rng.integers(0, 12)}", "cat": f"c{rng.integers(0, 3)}",
             "ts": 1_600_000_000 + u * 1000 + k, "kind": ["click", "buy", "view"][(u + k) % 3], "extra": "x"}
            for u in range(n_users) for k in range(per_user)]


def write_events(path, rows, format, compress=False):
    opener = gzip.open if compress else open
    if format == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif format == "jsonl":
        with opener(path, "wt") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        sep = "\t" if format == "tsv" else ","
        with opener(path, "wt") as f:
            f.write(sep.join(rows[0]) + "\n")
            f.writelines(sep.join(str(v) for v in row.values()) + "\n" for row in rows)


def value_counts(column) -> dict:
    counts = pc.value_counts(column)
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


def checked(source: SourceConfig) -> pa.Table:
    return pa.concat_tables(ray.get(read_checked_events(source).to_arrow_refs())).sort_by(
        [("user_id", "ascending"), ("timestamp", "ascending")])


@pytest.mark.parametrize("format, file", [("csv", "e.csv"), ("tsv", "e.tsv"), ("parquet", "e.parquet"),
                                          ("jsonl", "e.jsonl"), ("csv", "e.csv.gz"), ("jsonl", "e.json.gz")])
def test_event_readers_normalize_every_format(format, file, ray_session, tmp_path):
    rows = event_rows()
    write_events(tmp_path / file, rows, format, compress=file.endswith(".gz"))
    table = checked(SourceConfig(kind="events", inputs=(str(tmp_path / file),), columns=COLUMNS))
    assert table.column("outcome").to_pylist() == ["kept"] * len(rows)
    expected = sorted((r["uid"], r["sku"], r["cat"], r["ts"], r["kind"]) for r in rows)
    assert sorted(zip(*(table.column(c).to_pylist() for c in ("user_id", "item_id", "category", "timestamp",
                                                              "event_type")))) == expected


def test_event_filter_keeps_only_the_named_types(ray_session, tmp_path):
    rows = event_rows()
    write_events(tmp_path / "e.csv", rows, "csv")
    table = checked(SourceConfig(kind="events", inputs=(str(tmp_path),), columns=COLUMNS, keep_events=("click", "buy")))
    views = sum(r["kind"] == "view" for r in rows)
    assert value_counts(table.column("outcome")) == {"kept": len(rows) - views, "filtered": views}


BAD_ROWS = ["u90,i1,,1600000000,click", ",i1,c1,1600000000,click", "u91,,c1,1600000000,buy",
            "u92,i1,c1,yesterday,click", "u93,i1,c1,,click", "u94,i1", "u95,i2,c1,13/01/2020,view"]
BAD_REASONS = {"missing category": 1, "missing user_id": 1, "missing item_id": 1, "bad timestamp": 1,
               "missing timestamp": 1, "malformed row": 1}


def test_bad_rows_go_to_rejects_and_every_good_row_is_kept(ray_session, tmp_path):
    rows = event_rows()
    write_events(tmp_path / "e.csv", rows, "csv")
    with open(tmp_path / "e.csv", "a") as f:
        f.writelines(line + (",x" if line.count(",") == 4 else "") + "\n" for line in BAD_ROWS)
        f.write("u96,i3,c2,2020-05-01T10:00:00+00:00,buy,x\n")
    dataset = run(tmp_path, source=SourceConfig(kind="events", inputs=(str(tmp_path / "e.csv"),), columns=COLUMNS,
                                                keep_events=("click", "buy")), keep_staging=True)
    manifest = dataset.manifest
    good = [r for r in rows if r["kind"] != "view"] + [{"uid": "u96", "sku": "i3", "cat": "c2", "ts": 1588327200}]
    assert manifest["rejected"] == BAD_REASONS
    assert manifest["events"] == {"read": len(rows) + len(BAD_ROWS) + 1, "kept": len(good),
                                  "filtered": sum(r["kind"] == "view" for r in rows) + 1, "rejected": 6}
    rejects = dataset.rejects()
    assert value_counts(rejects.column("reason")) == BAD_REASONS
    assert set(rejects.column("source").to_pylist()) == {str(tmp_path / "e.csv")}
    assert "yesterday" in rejects.filter(pc.equal(rejects.column("reason"), "bad timestamp")).column("record")[0].as_py()
    staged = pq.read_table(tmp_path / "out" / "staging" / "events")
    assert sorted(zip(*(staged.column(c).to_pylist() for c in ("user_id", "item_id", "category", "timestamp")))) == \
        sorted((r["uid"], r["sku"], r["cat"], r["ts"]) for r in good)
    assert manifest["users"] == len({r["uid"] for r in good})


def test_json_lines_with_wrong_types_are_rejected(ray_session, tmp_path):
    rows = event_rows(2, 3)
    write_events(tmp_path / "e.jsonl", rows, "jsonl")
    with open(tmp_path / "e.jsonl", "a") as f:
        f.write('{"uid": {"id": 1}, "sku": "i1", "cat": "c", "ts": 1, "kind": "click"}\n{"uid": "u", "sku"\n')
    table = checked(SourceConfig(kind="events", inputs=(str(tmp_path / "e.jsonl"),), columns=COLUMNS))
    reasons = table.column("reject_reason").drop_null().to_pylist()
    assert sorted(reasons) == ["malformed record", "wrong type user_id"]
    assert pc.sum(pc.equal(table.column("outcome"), "kept")).as_py() == len(rows)


def test_missing_column_file_or_events_and_unreadable_files_are_clear_errors(ray_session, tmp_path):
    rows = event_rows()
    write_events(tmp_path / "e.csv", rows, "csv")
    with pytest.raises(InputError, match=r"column 'when' \(for timestamp\) is missing in .*e.csv"):
        run(tmp_path, source=SourceConfig(kind="events", inputs=(str(tmp_path / "e.csv"),),
                                          columns=ColumnMapping(user_id="uid", item_id="sku", category="cat",
                                                                timestamp="when")))
    with pytest.raises(InputError, match="missing.parquet does not exist"):
        run(tmp_path, name="o2", source=SourceConfig(kind="events", inputs=(str(tmp_path / "missing.parquet"),)))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e.csv").write_text("uid,sku,cat,ts,kind\n")
    with pytest.raises(InputError, match="no usable events.*0 rows read"):
        run(tmp_path, name="o3", source=SourceConfig(kind="events", inputs=(str(tmp_path / "empty"),), columns=COLUMNS))
    with gzip.open(tmp_path / "broken.csv.gz", "wt") as f:
        f.write("uid,sku,cat,ts,kind\n" + "u1,i1,c1,1,click\n" * 1000)
    data = (tmp_path / "broken.csv.gz").read_bytes()
    (tmp_path / "broken.csv.gz").write_bytes(data[: len(data) // 2])
    broken = SourceConfig(kind="events", inputs=(str(tmp_path / "broken.csv.gz"), str(tmp_path / "e.csv")),
                          columns=COLUMNS, strict=True)
    with pytest.raises(InputError, match="cannot read .*broken.csv.gz"):
        run(tmp_path, name="o4", source=broken)
    # By default a broken file costs only what it could not read: its rows read so far and every other file are
    # kept, and it counts as one rejected row that names it.
    dataset = run(tmp_path, name="o5", source=replace(broken, strict=False))
    manifest = dataset.manifest
    assert manifest["rejected"] == {"unreadable file": 1}
    events = manifest["events"]
    assert events["read"] == events["kept"] + events["filtered"] + events["rejected"]
    assert len(rows) <= events["kept"] < len(rows) + 1000  # the other file whole, the broken one up to its break
    rejects = dataset.rejects()
    assert rejects.column("source").to_pylist() == [str(tmp_path / "broken.csv.gz")]
    assert "cannot read" in rejects.column("record")[0].as_py()


def test_output_directory_is_replaced_only_when_it_holds_a_dataset(ray_session, tmp_path):
    write_events(tmp_path / "e.csv", event_rows(), "csv")
    source = SourceConfig(kind="events", inputs=(str(tmp_path / "e.csv"),), columns=COLUMNS)
    first = run(tmp_path, source=source)
    again = run(tmp_path, source=source, samples=SampleConfig(protocol="sliding"))
    assert again.manifest["protocol"] == "sliding" and first.path == again.path
    assert not (again.path / "staging").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        run(tmp_path, name="other", source=source)


def test_cli_reports_input_errors_without_a_traceback(ray_session, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("prepare_data", Path(__file__).parents[1] / "jobs" / "prepare_data.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(["--source", "events", "--input", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error: input file" in err and "nope.csv" in err and "Traceback" not in err


# ---------------------------------------------------------------- Amazon reviews + metadata


def test_amazon_reviews_take_the_category_from_the_metadata(ray_session, tmp_path):
    reviews = [{"reviewerID": f"R{u}", "asin": f"A{(u + k) % 5}", "unixReviewTime": 1_400_000_000 + 86400 * k,
                "overall": 5.0, "reviewText": "good"} for u in range(6) for k in range(4)]
    reviews.append({"reviewerID": "R0", "asin": "A9", "unixReviewTime": 1_400_900_000})
    with gzip.open(tmp_path / "reviews_Books_5.json.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in reviews)
    meta = [
        "{'asin': 'A0', 'categories': [['Books', 'Literature', 'Mystery'], ['Books', 'Sale']], 'title': \"It's\"}",
        '{"asin": "A1", "categories": [["Books", "Kids"]]}',
        "{'asin': 'A2', 'categories': [['Books', 'Kids']], 'price': 3.5}",
        '{"asin": "A3", "category": ["Books", "Science"]}',
        "{'asin': 'A4', 'categories': [['Books']]}",
        "{'asin': 'A8', 'categories': []}",
    ]
    with gzip.open(tmp_path / "meta_Books.json.gz", "wt") as f:
        f.writelines(line + "\n" for line in meta)
    dataset = run(tmp_path, source=SourceConfig(kind="amazon", inputs=(str(tmp_path / "reviews_Books_5.json.gz"),),
                                                meta=(str(tmp_path / "meta_Books.json.gz"),)))
    assert dataset.manifest["rejected"] == {"missing category": 1}
    assert dataset.manifest["events"]["kept"] == 24 and dataset.manifest["users"] == 6
    vocab = dataset.vocabularies()
    expected = {"A0": "Mystery", "A1": "Kids", "A2": "Kids", "A3": "Science", "A4": "Books"}
    for asin, category in expected.items():
        [item] = vocab.item.encode(pa.array([asin]))
        assert vocab.category.lookup([vocab.item_category[item]]) == [category]
    assert sum(dataset.manifest["counts"].values()) == 12


# ---------------------------------------------------------------- event logs with an item table


def test_item_table_gives_categories_first_value_and_counts_items_it_lacks(ray_session, tmp_path):
    ratings = ["userId,movieId,rating,timestamp"]
    ratings += [f"{u},{(u + k) % 4 + 1},4.0,{1_000_000 + 60 * k}" for u in range(5) for k in range(5)]
    ratings += ["0,99,3.0,1000900", "1,99,3.0,1000900"]  # movie 99 is not in the item table
    (tmp_path / "ratings.csv").write_text("\n".join(ratings) + "\n")
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A,Action|Comedy\n2,\"B, the\",Drama\n"
                                         "3,C, Comedy |Drama\n4,D,(no genres listed)\n")
    source = SourceConfig(kind="events", inputs=(str(tmp_path / "ratings.csv"),),
                          columns=ColumnMapping(user_id="userId", item_id="movieId", timestamp="timestamp"),
                          items=(str(tmp_path / "movies.csv"),), item_columns=ItemColumns("movieId", "genres"))
    dataset = run(tmp_path, source=source, samples=SampleConfig(protocol="sliding", max_len=10))

    assert dataset.manifest["events"]["kept"] == 27 and dataset.manifest["rejected"] == {}
    assert dataset.manifest["uncategorized"] == {"events": 2, "items": 1}
    assert dataset.manifest["source"]["items"]["category_rule"] == "the first of the values separated by '|'"
    vocab = dataset.vocabularies()
    expected = {"1": "Action", "2": "Drama", "3": "Comedy", "4": "(no genres listed)", "99": None}
    for movie, genre in expected.items():
        [item] = vocab.item.encode(pa.array([movie]))
        assert vocab.category.lookup([vocab.item_category[item]]) == [genre], movie
    [missing] = vocab.item.encode(pa.array(["99"]))
    assert vocab.item_category[missing] == OUT_OF_VOCABULARY
    samples = pa.concat_tables([dataset.read_split(split) for split in SPLITS])
    targets = samples.filter(pc.equal(samples.column("target_item"), int(missing)))
    assert targets.num_rows and set(targets.column("target_cat").to_pylist()) == {OUT_OF_VOCABULARY}


def test_item_table_errors_name_the_file_and_column(ray_session, tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,timestamp\n1,1,5\n1,2,6\n")
    (tmp_path / "movies.csv").write_text("movieId,title\n1,A\n")
    columns = ColumnMapping(user_id="userId", item_id="movieId", timestamp="timestamp")
    events = (str(tmp_path / "ratings.csv"),)
    with pytest.raises(InputError, match=r"column 'genres' \(for category\) is missing in .*movies.csv"):
        run(tmp_path, source=SourceConfig(kind="events", inputs=events, columns=columns,
                                          items=(str(tmp_path / "movies.csv"),),
                                          item_columns=ItemColumns("movieId", "genres")))
    with pytest.raises(InputError, match="input file .*absent.csv does not exist"):
        run(tmp_path, source=SourceConfig(kind="events", inputs=events, columns=columns,
                                          items=(str(tmp_path / "absent.csv"),)))
    with pytest.raises(InputError, match="--items applies to the events source"):
        SourceConfig(kind="synthetic", items=(str(tmp_path / "movies.csv"),))


def raw_events(rows: list[tuple[str, str, str]]) -> pa.Table:
    """(user, item, category) rows as raw events, one second apart."""
    return pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                     "category": [r[2] for r in rows], "timestamp": list(range(len(rows))),
                     "event_type": [None] * len(rows)}, schema=RAW_EVENT_SCHEMA)


def test_a_vocabulary_extension_never_moves_an_old_id():
    old = Vocabularies.from_events(raw_events([("u1", "a", "x"), ("u1", "b", "y"), ("u2", "a", "x"),
                                               ("u2", "c", "z")]))
    new = Vocabularies.from_events(raw_events([("u3", "d", "w"), ("u3", "d", "w"), ("u2", "b", "x"),
                                               ("u3", "e", "y"), ("u3", "d", "w")]))
    extended = new.extending(old)
    for name in ("user", "item", "category"):
        before, after = getattr(old, name).tokens.to_pylist(), getattr(extended, name).tokens.to_pylist()
        assert after[:len(before)] == before
    assert extended.item.tokens.to_pylist() == ["a", "b", "c", "d", "e"]  # d (3 events) before e (1)
    assert extended.category.tokens.to_pylist() == ["x", "y", "z", "w"]
    assert extended.user.tokens.to_pylist()[2:] == ["u3"]
    assert list(extended.item.counts) == [0, 1, 0, 3, 1]
    categories = dict(zip(extended.item.tokens.to_pylist(),
                          extended.category.lookup(extended.item_category[2:])))
    # b now comes with x in the window; c, unseen in it, keeps the reference's z.
    assert categories == {"a": "x", "b": "x", "c": "z", "d": "w", "e": "y"}
    ids = extended.item.encode(pa.array(["a", "b", "c"]))
    assert list(ids) == list(old.item.encode(pa.array(["a", "b", "c"])))


def test_a_window_may_keep_the_behaviors_before_it_as_history(ray_session, tmp_path):
    rows = event_rows(n_users=8, per_user=6)
    write_events(tmp_path / "e.csv", rows, "csv")
    source = SourceConfig(kind="events", inputs=(str(tmp_path / "e.csv"),), columns=COLUMNS)
    boundary = 1_600_003_003  # u0..u2 wholly before it, u3 half (k = 0..2 before, 3..5 inside), u4..u7 inside
    samples = SampleConfig(protocol="sliding", max_len=10)
    alone = run(tmp_path, "alone", source=source, since=str(boundary), samples=samples)
    context = run(tmp_path, "context", source=source, since=str(boundary), samples=samples, history_before_since=True)
    assert context.manifest["window"] == {"since": boundary, "until": None, "events": 48, "history_before_since": True}

    def targets(dataset: DatasetDir) -> pa.Table:
        table = pa.concat_tables(dataset.read_split(split) for split in SPLITS)
        return table.filter(pc.equal(table.column("label"), 1))

    inside, cut = targets(context), targets(alone)
    assert pc.min(inside.column("timestamp")).as_py() >= boundary
    assert inside.num_rows == 3 + 4 * 5 and cut.num_rows == 2 + 4 * 5  # u3's first target inside now has a past
    u3 = int(context.vocabularies().user.encode(pa.array(["u3"]))[0])
    first = inside.filter(pc.equal(inside.column("user"), u3)).sort_by("timestamp").slice(0, 1).to_pylist()[0]
    assert len(first["hist_item"]) == 3  # its three behaviors before the window
    latest = context.user_history()
    assert "u0" in latest.column("user_id").to_pylist()  # the served histories reach back too


def test_a_window_of_a_log_extends_its_reference_datasets_vocabularies(ray_session, tmp_path):
    rows = event_rows(n_users=8, per_user=6)
    write_events(tmp_path / "e.csv", rows, "csv")
    source = SourceConfig(kind="events", inputs=(str(tmp_path / "e.csv"),), columns=COLUMNS)
    boundary = 1_600_004_000  # users u0..u3 before it, u4..u7 after
    first = run(tmp_path, "first", source=source, until=str(boundary))
    iso = datetime.fromtimestamp(boundary, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    second = run(tmp_path, "second", source=source, since=iso, reference=str(first.path))
    assert first.manifest["window"] == {"since": None, "until": boundary, "events": 24}
    assert second.manifest["window"] == {"since": boundary, "until": None, "events": 24}
    assert second.manifest["reference"]["path"] == str(first.path.resolve())
    assert second.manifest["reference"]["vocab_sizes"] == first.manifest["vocab_sizes"]
    old, new = first.vocabularies(), second.vocabularies()
    for name in ("user", "item", "category"):
        before = getattr(old, name).tokens.to_pylist()
        assert getattr(new, name).tokens.to_pylist()[:len(before)] == before
    assert old.user.tokens.to_pylist() and set(old.user.tokens.to_pylist()) == {f"u{u}" for u in range(4)}
    assert set(new.user.tokens.to_pylist()[4:]) == {f"u{u}" for u in range(4, 8)}
    users = {u for split in SPLITS for u in second.read_split(split, ["user"]).column("user").to_pylist()}
    assert min(users) >= len(old.user)  # only the window's users have samples
    with pytest.raises(InputError, match="must be before until"):
        PrepareConfig(out=str(tmp_path / "x"), since="2020-09-14", until="2020-09-13")
    with pytest.raises(InputError, match="neither seconds since the epoch nor an ISO date"):
        PrepareConfig(out=str(tmp_path / "x"), since="last tuesday")
    with pytest.raises(InputError, match="not a prepared dataset"):
        PrepareConfig(out=str(tmp_path / "x"), reference=str(tmp_path))
    with pytest.raises(InputError, match="no events between"):
        run(tmp_path, "empty", source=source, since="2030-01-01")
