"""Warm start from an artifact: weights carried over by name, embedding rows by token, incompatible starts refused."""
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from dien.artifacts import load_artifact, save_artifact
from dien.data.vocab import RESERVED, Vocabulary
from dien.model import ModelConfig, build_model
from dien.train.warm_start import IncompatibleWarmStart, warm_start

CONFIG = ModelConfig(0, 0, hidden=8, mlp_dims=(16, 8), aux_dims=(8,))


def vocabulary(tokens: list[str]) -> Vocabulary:
    return Vocabulary(pa.array(tokens), np.arange(len(tokens), 0, -1))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    items, cats = vocabulary(["a", "b", "c", "d"]), vocabulary(["x", "y"])
    torch.manual_seed(1)
    config = replace(CONFIG, n_items=len(items), n_cats=len(cats))
    path = save_artifact(tmp_path_factory.mktemp("parent") / "dien", build_model("dien", config).eval(), "dien", config,
                         items, cats, max_len=10)
    return load_artifact(path)


def test_shared_tokens_keep_their_trained_rows_wherever_their_ids_moved(artifact):
    items, cats = vocabulary(["d", "new1", "b", "a", "new2"]), vocabulary(["y", "z", "x"])
    config = replace(CONFIG, n_items=len(items), n_cats=len(cats))
    torch.manual_seed(2)
    model = build_model("dien", config)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    carried = warm_start(model, "dien", config, artifact, items, cats)
    assert carried == {"parameters": len(fresh) - 2, "item_rows": 3 + RESERVED, "category_rows": 2 + RESERVED}
    old, new = artifact.model.embedding.items.weight, model.embedding.items.weight
    for token in ("a", "b", "d"):
        new_id = int(items.encode(pa.array([token]))[0])
        old_id = int(artifact.items.encode(pa.array([token]))[0])
        assert torch.equal(new[new_id], old[old_id])
    for token in ("new1", "new2"):
        new_id = int(items.encode(pa.array([token]))[0])
        assert torch.equal(new[new_id], fresh["embedding.items.weight"][new_id])
    assert torch.equal(new[:RESERVED], old[:RESERVED])
    y_new, y_old = (int(v.encode(pa.array(["y"]))[0]) for v in (cats, artifact.categories))
    assert torch.equal(model.embedding.cats.weight[y_new], artifact.model.embedding.cats.weight[y_old])
    for name, value in artifact.model.state_dict().items():
        if not name.startswith("embedding."):
            assert torch.equal(model.state_dict()[name], value), name


def test_the_warm_model_scores_shared_items_as_the_parent_did(artifact):
    items, cats = vocabulary(["c", "b", "a", "d", "e"]), vocabulary(["x", "y", "w"])
    config = replace(CONFIG, n_items=len(items), n_cats=len(cats))
    model = build_model("dien", config)
    warm_start(model, "dien", config, artifact, items, cats)

    def scores(target, vocab_items, vocab_cats):
        hist = torch.tensor([list(vocab_items.encode(pa.array(["a", "b", "c"])))])
        hist_cat = torch.tensor([list(vocab_cats.encode(pa.array(["x", "y", "x"])))])
        with torch.inference_mode():
            encoding = target.eval().encode_history(hist.long(), hist_cat.long(), torch.tensor([3]))
            return target.score(encoding, torch.tensor(vocab_items.encode(pa.array(["d"]))).long(),
                                torch.tensor(vocab_cats.encode(pa.array(["y"]))).long())

    torch.testing.assert_close(scores(model, items, cats), scores(artifact.model, artifact.items,
                                                                  artifact.categories))


def test_another_model_kind_or_config_is_refused_naming_the_difference(artifact):
    items, cats = vocabulary(["a"]), vocabulary(["x"])
    din_config = replace(CONFIG, n_items=len(items), n_cats=len(cats))
    with pytest.raises(IncompatibleWarmStart, match="holds a 'dien' model; this run trains 'din'"):
        warm_start(build_model("din", din_config), "din", din_config, artifact, items, cats)
    wider = replace(din_config, hidden=16)
    with pytest.raises(IncompatibleWarmStart, match="hidden: 8 in the artifact, 16 here"):
        warm_start(build_model("dien", wider), "dien", wider, artifact, items, cats)


def test_wide_crosses_are_carried_only_while_the_old_ids_keep_their_tokens(tmp_path):
    items, cats = vocabulary(["a", "b", "c"]), vocabulary(["x", "y"])
    config = replace(CONFIG, n_items=len(items), n_cats=len(cats), wide_buckets=64)
    parent = build_model("wide_deep", config)
    with torch.no_grad():
        for table in (parent.wide.items, parent.wide.cats, parent.wide.crosses):
            table.weight.normal_()
    artifact = load_artifact(save_artifact(tmp_path / "wd", parent.eval(), "wide_deep", config, items, cats, max_len=10))

    extended = vocabulary(["a", "b", "c", "new"]), vocabulary(["x", "y", "z"])
    grown = replace(config, n_items=len(extended[0]), n_cats=len(extended[1]))
    model = build_model("wide_deep", grown)
    carried = warm_start(model, "wide_deep", grown, artifact, *extended)
    assert "reinitialized" not in carried
    assert torch.equal(model.wide.crosses.weight, parent.wide.crosses.weight)
    assert torch.equal(model.wide.items.weight[:len(items)], parent.wide.items.weight)

    reordered = vocabulary(["c", "a", "b"]), vocabulary(["x", "y"])
    model = build_model("wide_deep", config)
    carried = warm_start(model, "wide_deep", config, artifact, *reordered)
    assert carried["reinitialized"] == ["wide.crosses.weight"]
    assert not model.wide.crosses.weight.any()
    c_new, c_old = (int(v.encode(pa.array(["c"]))[0]) for v in (reordered[0], items))
    assert torch.equal(model.wide.items.weight[c_new], parent.wide.items.weight[c_old])
