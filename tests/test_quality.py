"""The model benchmarks' verdicts, the DeepCTR-Torch peers on our samples, and the quality benchmark end to end."""
import math

import numpy as np
import pytest
import torch

from dien.bench import peers, quality, train_speed
from dien.bench.quality import QualityConfig, format_report, run_benchmark
from dien.bench.runs import Agreement, Ordering, format_table
from dien.data.batch import collate
from dien.train.metrics import auc_standard_error


def model(name: str, auc: float, std: float) -> dict:
    return {"name": name, "description": name, "runs": [], "auc_mean": auc, "auc_std": std, "auc_se_mean": 0.004,
            "auc_se_std": 0.0, "gauc_mean": auc, "gauc_std": std, "logloss_mean": 0.6, "logloss_std": 0.0,
            "samples_per_second_mean": 1000.0, "samples_per_second_std": 0.0}


def test_orderings_and_agreements_judge_the_tables_they_are_given():
    models = {m["name"]: m for m in (model("a", 0.80, 0.01), model("b", 0.75, 0.01), model("c", 0.79, 0.004),
                                     model("n", math.nan, 0.0))}
    assert Ordering("a", "b").check(models).endswith("-> holds")
    assert Ordering("a", "c").check(models).endswith("does NOT hold")  # 0.01 gap, 2 x std is 0.02
    assert Ordering("b", "a").check(models).endswith("does NOT hold")
    assert Ordering("a", "b", margin=0.06).check(models).endswith("does NOT hold")
    assert Ordering("a", "b", margin=0.04).check(models).endswith("-> holds")
    assert Ordering("n", "b").check(models).endswith("does NOT hold")
    assert Ordering("a", "missing").check(models) is None
    assert Agreement("a", "c").check(models).endswith("agree")
    assert Agreement("a", "b").check(models).endswith("DIFFER")
    table = format_table(list(models.values())[:3], (Ordering("a", "b"),)).splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["a", "c", "b"]
    assert table[-1].startswith("a > b: AUC gap +0.0500")


def test_peer_inputs_carry_our_targets_padded_histories_and_negatives(small_dataset):
    rows = small_dataset.splits["train"].slice(0, 40)
    features = peers.inputs(rows, max_len=30, negatives=True)
    batch = collate(rows)
    width = batch.hist_item.shape[1]
    assert features["hist_item_id"].shape == (40, 30) and not features["hist_item_id"][:, width:].any()
    np.testing.assert_array_equal(features["hist_item_id"][:, :width], batch.hist_item.numpy())
    np.testing.assert_array_equal(features["neg_hist_cate_id"][:, :width], batch.neg_hist_cat.numpy())
    np.testing.assert_array_equal(features["seq_length"], batch.lengths.numpy())
    np.testing.assert_array_equal(features["item_id"], batch.target_item.numpy())
    assert "neg_hist_item_id" not in peers.inputs(rows, max_len=30, negatives=False)


def test_the_benchmark_trains_ours_and_the_peer_on_the_same_samples_and_reuses_its_runs(prepared_dataset, tmp_path,
                                                                                       monkeypatch):
    config = QualityConfig(data=str(prepared_dataset.path), out=str(tmp_path), models=("dien", "dien_fit", "deepctr_dien"),
                           seeds=(0,), epochs=1, batch_size=64)
    report = run_benchmark(config)
    by_name = {m["name"]: m for m in report["models"]}
    assert set(by_name) == {"dien", "dien_fit", "deepctr_dien"}
    test_size = prepared_dataset.manifest["counts"]["test"]
    for m in by_name.values():
        [run] = m["runs"]
        assert run["seed"] == 0 and run["epochs"] == 1 and run["samples_per_second"] > 0
        # Scored on the whole test split: the AUC's standard error is the one of that many samples.
        assert run["auc_se"] == pytest.approx(auc_standard_error(run["auc"], test_size // 2, test_size // 2), rel=1e-6)
    assert "dien > deepctr_dien: AUC gap" in format_report(report)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a run the report holds was trained again")

    monkeypatch.setattr(quality, "run_training", must_not_train)
    monkeypatch.setattr(peers, "train_peer", must_not_train)
    again = run_benchmark(config)
    assert [m["runs"] for m in again["models"]] == [m["runs"] for m in report["models"]]


def test_the_benchmark_refuses_unknown_models_and_uneven_batches(tmp_path):
    with pytest.raises(ValueError, match="unknown models"):
        QualityConfig(data=str(tmp_path), models=("dien", "xgboost"))
    with pytest.raises(ValueError, match="does not split evenly"):
        QualityConfig(data=str(tmp_path), batch_size=127, workers=2)


def test_the_speed_benchmark_times_our_variants_against_the_peer_on_the_same_samples():
    threads = torch.get_num_threads()
    report = train_speed.run_benchmark(train_speed.SpeedConfig(samples=256, max_len=20, rounds=1, threads=threads))
    results = {r["name"]: r for r in report["results"]}
    assert list(results) == ["ours", "ours_bucketed", "deepctr_dien"]
    assert all(len(r["samples_per_second"]) == 1 and r["best"] > 0 for r in results.values())
    assert results["deepctr_dien"]["ratio_to_deepctr"] == 1.0
    assert results["ours"]["ratio_to_deepctr"] == pytest.approx(results["ours"]["best"] / results["deepctr_dien"]["best"])
    assert "length buckets 16" in train_speed.format_report(report)
