"""Sweeps: each trial trains in its own process with the settings it names, over the library's defaults."""
import dataclasses
import json

import pytest

from dien.bench.sweep import Trial, format_table, load_trials, run_sweep


def test_trials_file_skips_comments_and_names_settings(tmp_path):
    path = tmp_path / "trials.jsonl"
    path.write_text('# step 1\n{"model": "din", "train_options": {"lr": 0.002}, "seed": 1}\n\n'
                    '{"model_options": {"embedding_std": null}}\n')
    assert load_trials(path) == [Trial("din", {}, {"lr": 0.002}, 1), Trial("dien", {"embedding_std": None}, {}, 0)]
    assert Trial("din", {}, {"lr": 0.002}).label() == "din lr=0.002"
    path.write_text('{"modle": "din"}\n')
    with pytest.raises(TypeError, match="modle"):
        load_trials(path)


def test_each_trial_trains_with_its_own_settings_and_the_table_ranks_them(prepared_dataset, tmp_path):
    trials = [Trial("base", {}, {"epochs": 1, "patience": None}),
              Trial("din", {"history_sum": True}, {"epochs": 2, "patience": None, "lr": 0.01}, seed=1)]
    out = tmp_path / "sweep.json"
    results = run_sweep(str(prepared_dataset.path), trials, parallel=2, out=out)
    assert [r["trial"] for r in results] == [dataclasses.asdict(t) for t in trials]
    # Each process trained what its trial names: one epoch and two, the second with the model's valid AUC per epoch.
    assert [len(r["valid_auc_per_epoch"]) for r in results] == [1, 2]
    assert [r["valid_auc"] for r in results] == [r["valid_auc_per_epoch"][-1] for r in results]
    assert json.loads(out.read_text())["results"] == results
    ranked = sorted(results, key=lambda r: -r["valid_auc"])
    table = format_table(results).splitlines()
    assert [line.split()[0] for line in table[1:]] == [f"{r['valid_auc']:.4f}" for r in ranked]
    assert table[1].endswith(ranked[0]["label"])
