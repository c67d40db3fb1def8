"""Synthetic logs, vocabularies, sample building and collation."""
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from dien.data.batch import collate
from dien.data.local import build_local_dataset
from dien.data.samples import SPLITS, SampleConfig
from dien.data.synthetic import Catalog, SyntheticConfig, generate, generate_block
from dien.data.vocab import OUT_OF_VOCABULARY, Vocabulary

SMALL = SyntheticConfig(n_users=300, n_items=100, n_categories=10, min_events=3, max_events=12, block_size=100, seed=5)


def test_synthetic_is_deterministic_and_blockwise():
    first, second = generate(SMALL), generate(SMALL)
    assert first.equals(second)
    assert generate_block(SMALL, 2).equals(first.slice(first.num_rows - generate_block(SMALL, 2).num_rows))
    assert not generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 6})).equals(first)


def test_synthetic_users_follow_the_successor_graph():
    config = SyntheticConfig(n_users=200, n_items=100, n_categories=10, noise=0.0, drift=0.5, block_size=200)
    events = generate(config)
    successors = Catalog.build(config).successors
    users = events.column("user_id").to_numpy(zero_copy_only=False)
    cats = np.array([int(c[1:]) for c in events.column("category").to_pylist()])
    same_user = users[1:] == users[:-1]
    moved = same_user & (cats[1:] != cats[:-1])
    assert moved.sum() > 100
    assert all(b in successors[a] for a, b in zip(cats[:-1][moved], cats[1:][moved]))
    ts = events.column("timestamp").to_numpy()
    assert np.all(ts[1:][same_user] > ts[:-1][same_user])


@pytest.mark.parametrize("bad", [{"drift": 1.5}, {"min_events": 0}, {"n_items": 5, "n_categories": 10}])
def test_synthetic_rejects_bad_knobs(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**bad)


def test_vocabulary_reserves_padding_and_oov_and_sorts_by_frequency():
    vocab = Vocabulary.from_values(pa.array(["b", "a", "b", "c", "c", "c"]), min_count=2)
    assert vocab.encode(pa.array(["c", "b", "a", "zz", None])).tolist() == [2, 3, 1, 1, 1]
    assert len(vocab) == 4 and OUT_OF_VOCABULARY == 1


@pytest.mark.parametrize("protocol", ["paper", "sliding"])
def test_samples_have_no_leakage_and_true_negatives(protocol):
    events = generate(SMALL)
    dataset = build_local_dataset(events, SampleConfig(protocol=protocol, max_len=5, seed=1))
    vocab = dataset.vocabularies
    user = vocab.user.encode(events.column("user_id"))
    item = vocab.item.encode(events.column("item_id"))
    ts = events.column("timestamp").to_numpy()
    timeline = {}
    for u, i, t in zip(user, item, ts):
        timeline.setdefault(int(u), []).append((int(t), int(i)))
    for split, table in dataset.splits.items():
        for row in table.to_pylist():
            history = [i for t, i in timeline[row["user"]] if t < row["timestamp"]][-5:]
            assert row["hist_item"] == history
            assert all(n != h for n, h in zip(row["neg_hist_item"], row["hist_item"]))
            assert len(row["hist_item"]) == len(row["hist_cat"]) == len(row["neg_hist_cat"]) <= 5
    for table in dataset.splits.values():
        labels = table.column("label").to_numpy()
        keys = list(zip(table.column("user").to_pylist(), table.column("timestamp").to_pylist()))
        positives = {k: it for k, it, lab in zip(keys, table.column("target_item").to_pylist(), labels) if lab == 1}
        negatives = {k: it for k, it, lab in zip(keys, table.column("target_item").to_pylist(), labels) if lab == 0}
        assert positives.keys() == negatives.keys()
        assert all(positives[k] != negatives[k] for k in positives)


def test_paper_protocol_one_positive_one_negative_per_user_and_user_split():
    dataset = build_local_dataset(generate(SyntheticConfig(n_users=3000, n_items=100, n_categories=10,
                                                           block_size=1000)), SampleConfig(seed=2))
    users = {}
    for split, table in dataset.splits.items():
        for u, label in zip(table.column("user").to_pylist(), table.column("label").to_pylist()):
            users.setdefault(u, []).append((split, label))
    assert all(sorted(l for _, l in rows) == [0, 1] and len({s for s, _ in rows}) == 1 for rows in users.values())
    test_share = sum(rows[0][0] == "test" for rows in users.values()) / len(users)
    assert 0.08 < test_share < 0.12


def test_sliding_protocol_evaluates_on_each_users_latest_targets():
    dataset = build_local_dataset(generate(SMALL), SampleConfig(protocol="sliding", seed=1))
    latest_train = {}
    train = dataset.splits["train"]
    for u, t in zip(train.column("user").to_pylist(), train.column("timestamp").to_pylist()):
        latest_train[u] = max(t, latest_train.get(u, t))
    for split in ("valid", "test"):
        table = dataset.splits[split]
        assert table.num_rows > 0
        for u, t in zip(table.column("user").to_pylist(), table.column("timestamp").to_pylist()):
            assert t > latest_train.get(u, -1)


def test_collate_pads_left_aligned_histories():
    dataset = build_local_dataset(generate(SMALL), SampleConfig(max_len=6, seed=1))
    rows = dataset.splits["train"].slice(0, 9)
    batch = collate(rows)
    lengths = [len(h) for h in rows.column("hist_item").to_pylist()]
    assert batch.lengths.tolist() == lengths
    assert batch.hist_item.shape == (9, max(lengths))
    for b, history in enumerate(rows.column("hist_item").to_pylist()):
        assert batch.hist_item[b, : len(history)].tolist() == history
        assert torch.all(batch.hist_item[b, len(history):] == 0)
    assert batch.label.dtype == torch.float32


def test_synthetic_taste_walks_along_each_category():
    config = SyntheticConfig(n_users=100, n_items=200, n_categories=4, noise=0.0, taste_step=2, block_size=100)
    events = generate(config)
    per_cat = config.items_per_category
    steps = {}
    for user, item in zip(events.column("user_id").to_pylist(), events.column("item_id").to_pylist()):
        index = int(item[1:])
        steps.setdefault((user, index // per_cat), []).append(index % per_cat)
    pairs = [(a, b) for ranks in steps.values() for a, b in zip(ranks, ranks[1:])]
    assert len(pairs) > 500
    # Away from the ends of the item line (where the walk reflects) every move is taste_step items.
    inner = [b - a for a, b in pairs if 2 <= a <= per_cat - 3 and 2 <= b <= per_cat - 3]
    assert len(inner) > 400 and all(abs(move) == 2 for move in inner)


@pytest.mark.parametrize("eval_targets", [1, 3])
def test_sliding_protocol_holds_out_each_users_last_k_targets(eval_targets):
    dataset = build_local_dataset(generate(SMALL), SampleConfig(protocol="sliding", eval_targets=eval_targets,
                                                                seed=1))
    positives = {split: table.filter(pc.equal(table.column("label"), 1)) for split, table in dataset.splits.items()}
    per_user = {split: Counter(table.column("user").to_pylist()) for split, table in positives.items()}
    for user in per_user["train"].keys() | per_user["test"].keys():
        targets = sum(per_user[split][user] for split in SPLITS)
        test = min(eval_targets, targets - 1)
        assert per_user["test"][user] == test
        assert per_user["valid"][user] == min(eval_targets, targets - 1 - test)
        assert per_user["train"][user] >= 1
    for earlier, later in (("train", "valid"), ("valid", "test"), ("train", "test")):
        last = {}
        for u, t in zip(positives[earlier].column("user").to_pylist(), positives[earlier].column("timestamp").to_pylist()):
            last[u] = max(t, last.get(u, t))
        assert all(t >= last.get(u, t) for u, t in zip(positives[later].column("user").to_pylist(),
                                                        positives[later].column("timestamp").to_pylist()))


def test_items_below_min_count_are_sampled_as_negatives_as_often_as_they_are_positives(long_tail_dataset):
    train = long_tail_dataset.splits["train"]
    share = {label: np.mean(train.filter(pc.equal(train.column("label"), label)).column("target_item").to_numpy()
                            == OUT_OF_VOCABULARY) for label in (0, 1)}
    assert share[1] > 0.02
    assert share[0] == pytest.approx(share[1], rel=0.25)
    negatives = np.concatenate(train.column("neg_hist_item").to_numpy())
    assert np.mean(negatives == OUT_OF_VOCABULARY) == pytest.approx(share[1], rel=0.25)
    oov_cats = train.filter(pc.equal(train.column("target_item"), OUT_OF_VOCABULARY)).column("target_cat")
    assert len(set(oov_cats.to_pylist())) > 5, "an OOV negative keeps a category of one of the tail items"
