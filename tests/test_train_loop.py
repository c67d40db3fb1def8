"""The single-process trainer: early stopping keeps the best validation epoch's weights; what the trained
model makes of an unknown item."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from dien.data.batch import collate
from dien.data.vocab import OUT_OF_VOCABULARY
from dien.model import ModelConfig, build_model
from dien.train.loop import TrainConfig, fit, fit_and_test, iterate_batches, predict


def test_early_stopping_restores_the_best_validation_epoch(small_dataset):
    torch.manual_seed(0)
    model = build_model("din", ModelConfig(small_dataset.n_items, small_dataset.n_cats, hidden=16))
    # A learning rate this high overfits the ~1,300 training samples within a few epochs.
    config = TrainConfig(epochs=8, batch_size=64, lr=2e-2, lr_decay=1.0, patience=2)
    valid = small_dataset.splits["valid"]
    result = fit(model, small_dataset.splits["train"], valid, config)

    aucs = [epoch["valid_auc"] for epoch in result.epochs]
    assert result.best_epoch == 1 + int(np.argmax(aucs))
    assert result.best_epoch < len(aucs), "the run should have overfitted past its best epoch"
    assert len(aucs) == min(config.epochs, result.best_epoch + config.patience)
    final = predict(model, iterate_batches(valid, 512)).metrics()["auc"]
    assert final == pytest.approx(max(aucs), abs=1e-9)


def test_early_stopping_needs_a_validation_split(small_dataset):
    model = build_model("base", ModelConfig(small_dataset.n_items, small_dataset.n_cats))
    with pytest.raises(ValueError, match="needs a validation split"):
        fit(model, small_dataset.splits["train"], None, TrainConfig(patience=1))


@pytest.mark.parametrize("bad", [dict(patience=0), dict(epochs=0), dict(batch_size=0)])
def test_train_config_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_an_unknown_candidate_scores_near_the_base_rate_not_above_known_items(long_tail_dataset):
    dataset = long_tail_dataset
    torch.manual_seed(0)
    model = build_model("dien", ModelConfig(dataset.n_items, dataset.n_cats, hidden=16))
    fit(model, dataset.splits["train"], None, TrainConfig(epochs=2, batch_size=64, lr=2e-3, patience=None))
    held_back = collate(dataset.splits["test"])
    known = model.predict(held_back)
    unknown = model.predict(replace(held_back, target_item=torch.full_like(held_back.target_item, OUT_OF_VOCABULARY)))
    base_rate = held_back.label.mean().item()
    assert abs(unknown.mean().item() - base_rate) < 0.1
    assert (unknown[:, None] > known[None, :]).float().mean().item() < 0.6


def test_fit_and_test_scores_the_test_split_with_the_weights_training_ended_with(small_dataset):
    torch.manual_seed(0)
    model = build_model("din", ModelConfig(small_dataset.n_items, small_dataset.n_cats))
    config = TrainConfig(epochs=2, patience=1)
    result, test = fit_and_test(model, small_dataset.splits, config)
    assert [epoch["epoch"] for epoch in result.epochs] == [1, 2] and "valid_auc" in result.epochs[0]
    assert test == predict(model, iterate_batches(small_dataset.splits["test"], config.eval_batch_size)).metrics()
