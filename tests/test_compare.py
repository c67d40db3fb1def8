"""The model comparison job: every (model, seed) is trained, early-stopped on validation and tested."""
import copy
import json
from dataclasses import replace

import pytest

from dien.data.samples import SampleConfig
from dien.bench.compare import CompareConfig, compare_models, format_table, merge_reports
from dien.train.loop import TrainConfig

from conftest import SMALL_WORLD


def test_comparison_reports_every_run_and_checks_the_ordering(tmp_path):
    config = CompareConfig(synthetic=replace(SMALL_WORLD, n_users=300), samples=SampleConfig(max_len=20),
                           train=TrainConfig(epochs=3, batch_size=64, lr=5e-3, patience=1),
                           hidden=8, models=("base", "din", "dien"), seeds=(0, 1))
    out = tmp_path / "compare.json"
    report = compare_models(config, out=out)

    assert json.loads(out.read_text())["models"] == json.loads(json.dumps(report["models"]))
    for model in report["models"]:
        assert [run["seed"] for run in model["runs"]] == [0, 1]
        for run in model["runs"]:
            assert 0.0 <= run["auc"] <= 1.0 and run["samples_per_second"] > 0
            assert 1 <= run["best_epoch"] <= run["epochs"] <= 3
    table = format_table(report)
    assert "dien > din: AUC gap" in table and "din > base: AUC gap" in table

    # Seeds run in separate processes merge into the same table.
    halves = []
    for seed in (0, 1):
        half = copy.deepcopy(report)
        half["config"]["seeds"] = [seed]
        for model in half["models"]:
            model["runs"] = [run for run in model["runs"] if run["seed"] == seed]
        halves.append(half)
    merged = merge_reports(halves)
    assert merged["config"]["seeds"] == [0, 1]
    for a, b in zip(merged["models"], report["models"]):
        assert a["auc_mean"] == pytest.approx(b["auc_mean"]) and a["auc_std"] == pytest.approx(b["auc_std"])
    with pytest.raises(ValueError, match="seed 0 appears in two reports"):
        merge_reports([halves[0], halves[0]])
    other = copy.deepcopy(halves[1])
    other["config"]["hidden"] = 16
    with pytest.raises(ValueError, match="different hidden settings"):
        merge_reports([halves[0], other])
