"""Input handling without Ray: validation, column mapping, JSON/Amazon parsing, paths, vocabularies, histories."""
import gzip
import io
import json

import numpy as np
import pyarrow as pa
import pytest

from dien.data.events import ColumnMapping, InputError, check_events
from dien.data.formats import (
    MAX_LINE_BYTES,
    amazon_category,
    check_input_columns,
    expand_inputs,
    input_columns,
    parse_amazon_meta,
    parse_json_records,
    read_raw_tables,
    resolve_format,
)
from dien.data.samples import PopularitySampler, SampleConfig, build_user_samples, latest_histories
from dien.data.synthetic import SyntheticConfig, generate
from dien.data.vocab import Vocabularies

MAPPING = ColumnMapping(user_id="uid", item_id="sku", category="cat", timestamp="ts", event_type="kind")


def raw(rows):
    names = ["user_id", "item_id", "category", "timestamp", "event_type"]
    return pa.table({name: pa.array([r[i] for r in rows], pa.string()) for i, name in enumerate(names)})


def test_check_events_rejects_each_bad_field_and_keeps_good_rows():
    table = raw([
        ("u1", "i1", "c1", "100", "click"),
        ("", "i1", "c1", "100", "click"),
        ("u1", None, "c1", "100", "click"),
        ("u1", "i1", " ", "100", "click"),
        ("u1", "i1", "c1", "yesterday", "click"),
        ("u1", "i1", "c1", None, "click"),
        ("u2", "i2", "c2", "2020-01-01T00:00:00Z", "buy"),
        ("u2", "i2", "c2", "2020-01-01", None),
    ])
    checked = check_events(table, "f.csv")
    assert checked.column("outcome").to_pylist() == ["kept"] + ["rejected"] * 5 + ["kept"] * 2
    assert checked.column("reject_reason").to_pylist()[1:6] == [
        "missing user_id", "missing item_id", "missing category", "bad timestamp", "missing timestamp"]
    assert checked.column("timestamp").to_pylist()[6:] == [1577836800, 1577836800]
    assert set(checked.column("source").to_pylist()[1:6]) == {"f.csv"}
    assert json.loads(checked.column("record")[4].as_py())["timestamp"] == "yesterday"


def test_check_events_filters_by_type_before_checking_but_never_hides_malformed_rows():
    table = raw([("u1", "i1", "c1", "1", "view"), ("u1", "", "c1", "1", "view"), ("u1", "i1", "c1", "1", "buy"),
                 (None, None, None, None, None)])
    table = table.append_column("reject_reason", pa.array([None, None, None, "malformed row"], pa.string()))
    checked = check_events(table, "f.csv", keep_events=["click", "buy"])
    assert checked.column("outcome").to_pylist() == ["filtered", "filtered", "kept", "rejected"]
    assert checked.column("reject_reason").to_pylist() == [None, None, None, "malformed row"]


def test_check_events_accepts_typed_columns():
    table = pa.table({"user_id": pa.array([7, 8], pa.int64()), "item_id": ["a", "b"], "category": ["c", "c"],
                      "timestamp": pa.array([1.0e9, 1.5], pa.float64())})
    checked = check_events(table, "f.parquet")
    assert checked.column("user_id").to_pylist() == ["7", "8"]
    assert checked.column("reject_reason").to_pylist() == [None, "bad timestamp"]
    moments = pa.array([1_500_000_000_123, None], pa.timestamp("ms", tz="UTC"))
    checked = check_events(table.set_column(3, "timestamp", moments), "f.parquet")
    assert checked.column("timestamp").to_pylist() == [1_500_000_000, None]
    assert checked.column("reject_reason").to_pylist() == [None, "missing timestamp"]
    checked = check_events(table.set_column(3, "timestamp", pa.array([None, 5], pa.int64())), "f.parquet")
    assert checked.column("reject_reason").to_pylist() == ["missing timestamp", None]
    with pytest.raises(InputError, match="timestamp has type bool in f.parquet"):
        check_events(table.set_column(3, "timestamp", pa.array([True, False])), "f.parquet")


def test_column_mapping_parses_short_names_and_rejects_unknown_fields():
    assert ColumnMapping.parse("user=uid,item=sku,category=cat,timestamp=ts,event_type=kind") == MAPPING
    assert ColumnMapping.parse("user=reviewer").fields() == {
        "user_id": "reviewer", "item_id": "item_id", "category": "category", "timestamp": "timestamp"}
    with pytest.raises(InputError, match="colour"):
        ColumnMapping.parse("colour=red")


def test_json_records_reject_wrong_types_and_accept_python_literals():
    lines = [
        '{"uid": "u1", "sku": "i1", "cat": "c1", "ts": 100, "kind": "click"}',
        "{'uid': 'u2', 'sku': 'i2', 'cat': 'c2', 'ts': '2020-01-01', 'kind': 'buy'}",
        '{"uid": ["u3"], "sku": "i3", "cat": "c3", "ts": 100}',
        '{"uid": "u4", "sku": "i4", "cat": "c4", "ts": true}',
        '{"uid": 5, "sku": "i5", "cat": "c5", "ts": 100.0}',
        '{"uid": "u6", "sku"',
        '[1, 2]',
    ]
    checked = check_events(parse_json_records(lines, MAPPING.fields()), "f.jsonl")
    assert checked.column("reject_reason").to_pylist() == [
        None, None, "wrong type user_id", "wrong type timestamp", None, "malformed record", "malformed record"]
    assert checked.column("user_id").to_pylist()[4] == "5"
    assert checked.column("record")[5].as_py() == '{"uid": "u6", "sku"'


def test_amazon_category_is_the_last_level_of_the_first_path():
    assert amazon_category({"categories": [["Books", "Fiction", "Mystery"], ["Books", "Sale"]]}) == "Mystery"
    assert amazon_category({"category": ["Electronics", "Audio"]}) == "Audio"
    assert amazon_category({"categories": []}) is None
    meta = parse_amazon_meta(["{'asin': 'A1', 'categories': [['Books', 'Kids']], 'title': \"it's\"}",
                              '{"asin": "A2", "categories": [["Books"]]}', "not a record", '{"title": "x"}'])
    assert meta.to_pylist() == [{"item_id": "A1", "category": "Kids"}, {"item_id": "A2", "category": "Books"},
                                {"item_id": None, "category": None}, {"item_id": None, "category": None}]


CSV_FIELDS = {"user_id": "user", "item_id": "item", "timestamp": "ts"}


def csv_rows(data: bytes) -> tuple[list[dict], dict[str, int]]:
    """The kept rows and the rejected rows' reasons of a CSV stream."""
    tables = list(read_raw_tables(io.BytesIO(data), "csv", CSV_FIELDS))
    rows = [r for t in tables for r in t.to_pylist()]
    kept = [r for r in rows if r.get("reject_reason") is None]
    reasons: dict[str, int] = {}
    for r in rows:
        if r.get("reject_reason") is not None:
            reasons[r["reject_reason"]] = reasons.get(r["reject_reason"], 0) + 1
    return kept, reasons


def test_one_bad_csv_line_costs_only_itself():
    good = [b"u%d,i%d,%d\n" % (k, k, k) for k in range(5)]
    bad_lines = {"invalid UTF-8": b"u\xff\xfe,i9,9\n", "binary data": b"\x00\x01,\x02,3\n",
                 "unterminated quote": b'u7,"i7,7\n', "line too long": b"u8," + b"x" * (MAX_LINE_BYTES + 10) + b",8\n"}
    data = b"\xef\xbb\xbfuser,item,ts\n" + b"".join(good[:3] + list(bad_lines.values()) + good[3:])
    kept, reasons = csv_rows(data)
    # Every good line is kept (the quote swallows none of the lines after it), every bad one rejected by name.
    assert [r["user_id"] for r in kept] == [f"u{k}" for k in range(5)]
    assert reasons == dict.fromkeys(bad_lines, 1)
    assert csv_rows(b"") == ([], {})


def test_a_malformed_first_json_line_is_not_fatal(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text("{not json\n" + json.dumps({"user": "u1", "item": "i1", "ts": 1}) + "\n")
    assert input_columns(str(path), "jsonl") == {"user", "item", "ts"}
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbfuser,item,ts\nu1,i1,1\n")
    assert input_columns(str(bom), "csv") == {"user", "item", "ts"}


def test_inputs_expand_directories_and_globs_and_name_what_is_missing(tmp_path):
    (tmp_path / "logs" / "day=1").mkdir(parents=True)
    for name in ("logs/day=1/a.csv", "logs/b.csv", "logs/_SUCCESS", "logs/.hidden.csv"):
        (tmp_path / name).write_text("uid,sku,cat,ts\n")
    files = expand_inputs([str(tmp_path / "logs")])
    assert [f.split("logs/")[1] for f in files] == ["b.csv", "day=1/a.csv"]
    assert expand_inputs([str(tmp_path / "logs" / "*.csv")]) == [str(tmp_path / "logs" / "b.csv")]
    assert resolve_format(files, None) == "csv"
    with pytest.raises(InputError, match="nope.csv does not exist"):
        expand_inputs([str(tmp_path / "nope.csv")])
    with pytest.raises(InputError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.tsv")])
    with pytest.raises(InputError, match=r"column 'kind' \(for event_type\) is missing in .*b.csv"):
        check_input_columns(files, "csv", MAPPING.fields())
    with pytest.raises(InputError, match="mix formats"):
        resolve_format([*files, str(tmp_path / "x.parquet")], None)


def test_input_columns_of_gzipped_json_lines(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"reviewerID": "u", "asin": "a", "unixReviewTime": 1}\n')
    check_input_columns([str(path)], "jsonl", {"user_id": "reviewerID"})
    with pytest.raises(InputError, match="'uid'"):
        check_input_columns([str(path)], "jsonl", {"user_id": "uid"})


def test_vocabularies_from_counts_equal_in_process_ones_and_round_trip(tmp_path):
    events = generate(SyntheticConfig(n_users=300, n_items=100, n_categories=10, min_events=3, max_events=12,
                                      block_size=100, seed=5))
    vocab = Vocabularies.from_events(events, min_count=3)
    assert len(vocab.item) < 100 + 2  # rare items fell out
    items = dict(zip(vocab.item.tokens.to_pylist(), range(2, len(vocab.item))))
    first_category = {}
    for item, cat in zip(events.column("item_id").to_pylist(), events.column("category").to_pylist()):
        first_category[item] = min(cat, first_category.get(item, cat))
    for item, index in items.items():
        assert vocab.category.lookup([vocab.item_category[index]]) == [first_category[item]]
    vocab.save(tmp_path)
    loaded = Vocabularies.load(tmp_path)
    assert loaded.item.tokens.equals(vocab.item.tokens) and np.array_equal(loaded.item_category, vocab.item_category)
    assert loaded.sizes() == vocab.sizes()


def test_latest_histories_keep_the_last_behaviors_of_each_user():
    user = np.array([2, 2, 2, 3, 5, 5])
    item = np.array([10, 11, 12, 13, 14, 15])
    table = latest_histories(user, item, item + 100, np.arange(6) * 10, max_len=2)
    assert table.to_pylist() == [
        {"user": 2, "hist_item": [11, 12], "hist_cat": [111, 112], "timestamp": 20},
        {"user": 3, "hist_item": [13], "hist_cat": [113], "timestamp": 30},
        {"user": 5, "hist_item": [14, 15], "hist_cat": [114, 115], "timestamp": 50},
    ]


def test_samples_do_not_depend_on_event_order_even_with_simultaneous_events():
    rng = np.random.default_rng(0)
    n = 400
    events = pa.table({"user": rng.integers(2, 30, n).astype(np.int32), "item": rng.integers(2, 40, n).astype(np.int32),
                       "cat": rng.integers(2, 6, n).astype(np.int32), "timestamp": rng.integers(0, 20, n)})
    sampler = PopularitySampler(np.arange(2, 40), np.arange(2, 40) % 4 + 2, np.ones(38))
    config = SampleConfig(protocol="sliding", max_len=5, seed=3)
    first = build_user_samples(events, config, sampler)
    second = build_user_samples(events.take(rng.permutation(n)), config, sampler)
    assert first[0].equals(second[0]) and first[1].equals(second[1])
