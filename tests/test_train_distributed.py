"""Ray Train: two CPU workers learn; a killed worker resumes mid-epoch on exactly the samples it had left; a
re-run with more epochs continues; a run name cannot be continued with other settings; Ray's noise is dropped."""
import logging
import math
from dataclasses import replace

import pytest

from dien.artifacts import load_artifact
from dien.curves import read_curves
from dien.ray_logs import NOISE, DropMessages, drop_ray_noise, logger_names
from dien.train.distributed import (FAIL_AT_STEP_ENV, ClusterConfig, RunMismatch, TrainJob, check_same_run,
                                    claim_run, export_artifact, identity_differences, run_training)
from dien.train.evaluate import evaluate_artifact
from dien.train.loop import TrainConfig


def make_job(dataset, storage, run_name, epochs, checkpoint_every=0, lr=5e-3, patience=None):
    return TrainJob(
        data=str(dataset.path),
        model="dien",
        # The official code's sum-pooled MLP inputs and PyTorch's N(0, 1) embeddings: on ~2.4k samples the
        # papers' inputs and the default small embeddings need more than the two epochs these tests can afford
        # before DIEN leaves chance level (tests/test_models.py covers both).
        model_options={"hidden": 16, "history_sum": True, "embedding_std": None},
        train=TrainConfig(epochs=epochs, batch_size=64, lr=lr, patience=patience),
        cluster=ClusterConfig(workers=2, cpus_per_worker=1.0, storage=str(storage), run_name=run_name,
                              max_failures=1, checkpoint_every_steps=checkpoint_every),
    )


def steps_per_epoch(dataset, batch_size=64, workers=2):
    rows_per_worker = math.ceil(dataset.manifest["counts"]["train"] / workers)
    return math.ceil(rows_per_worker / batch_size)


def test_two_workers_learn_and_export_an_artifact(prepared_dataset, tmp_path):
    job = make_job(prepared_dataset, tmp_path / "runs", "learn", epochs=2, patience=2)
    result = run_training(job)
    assert result.error is None
    metrics = result.metrics
    assert metrics["global_step"] == 2 * steps_per_epoch(prepared_dataset)
    # Early stopping: the final weights are the better validation epoch's, whichever it was.
    first_epoch = next(r for r in result.metrics_dataframe.to_dict("records") if r["epoch"] == 1)
    assert metrics["valid_auc"] >= first_epoch["valid_auc"] - 1e-9
    assert (metrics["best_epoch"] == 1) == (metrics["valid_auc"] == pytest.approx(first_epoch["valid_auc"], abs=1e-9))
    # The synthetic data's order-aware ceiling is ~0.9 AUC; two short epochs clear 0.6 by a margin.
    assert metrics["valid_auc"] > 0.6, metrics
    assert 0 < metrics["test_logloss"] < 1.0

    artifact = load_artifact(export_artifact(job, result, tmp_path / "artifact"))
    assert artifact.manifest["metrics"]["test_auc"] == pytest.approx(metrics["test_auc"])
    assert artifact.manifest["metrics"]["best_epoch"] == metrics["best_epoch"]
    for split in ("valid", "test"):
        offline = evaluate_artifact(artifact, prepared_dataset, split)
        assert offline["auc"] == pytest.approx(metrics[f"{split}_auc"], abs=1e-6)
    # The training curve is kept with the model: one point per epoch with the epoch's own validation metrics.
    curve = read_curves(artifact.path)
    assert [point["epoch"] for point in curve] == [1.0, 2.0]
    assert curve[0]["valid_auc"] == pytest.approx(first_epoch["valid_auc"])
    assert all(point["train_loss"] > 0 for point in curve)
    assert {"curves.json", "curves.csv", "training_curves.png"} <= set(artifact.manifest["files"])
    header = (artifact.path / "curves.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "epoch" and "valid_auc" in header


def test_a_killed_worker_resumes_mid_epoch_and_trains_every_sample_once(prepared_dataset, tmp_path, monkeypatch):
    per_epoch = steps_per_epoch(prepared_dataset)
    uninterrupted = run_training(make_job(prepared_dataset, tmp_path / "runs", "straight", epochs=1))
    assert uninterrupted.error is None and uninterrupted.metrics["resumed_from_step"] == 0

    monkeypatch.setenv(FAIL_AT_STEP_ENV, str(per_epoch // 2 + 2))
    job = make_job(prepared_dataset, tmp_path / "runs", "recover", epochs=1, checkpoint_every=per_epoch // 2)
    result = run_training(job)
    assert result.error is None
    # The worker group restarted from the mid-epoch checkpoint, not from step 0, and ran every step once ...
    assert result.metrics["resumed_from_step"] == per_epoch // 2
    assert result.metrics["global_step"] == per_epoch
    # ... on exactly the samples, in exactly the order, of the run that never failed.
    for key in ("epoch_samples", "epoch_sample_checksum"):
        assert result.metrics[key] == uninterrupted.metrics[key], key
    assert result.metrics["epoch_samples"] == prepared_dataset.manifest["counts"]["train"]
    assert result.metrics["train_loss"] == pytest.approx(uninterrupted.metrics["train_loss"], rel=1e-6)
    assert result.metrics["valid_auc"] == pytest.approx(uninterrupted.metrics["valid_auc"], abs=1e-9)

    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    rerun = run_training(make_job(prepared_dataset, tmp_path / "runs", "recover", epochs=2))
    assert rerun.error is None, "a finished run re-run with more epochs continues"
    assert rerun.metrics["resumed_from_step"] == per_epoch
    assert rerun.metrics["global_step"] == 2 * per_epoch
    assert rerun.metrics["epoch_sample_checksum"] == result.metrics["epoch_sample_checksum"], "every sample again"


def test_a_run_name_with_other_settings_is_refused_before_any_worker_starts(prepared_dataset, tmp_path):
    storage = tmp_path / "runs"
    claim_run(make_job(prepared_dataset, storage, "taken", epochs=1))
    claim_run(make_job(prepared_dataset, storage, "taken", epochs=3))  # more epochs: the same run, continued
    with pytest.raises(RunMismatch, match=r"model_config\.hidden: 16 -> 32"):
        run_training(replace(make_job(prepared_dataset, storage, "taken", epochs=1),
                             model_options={"hidden": 32, "history_sum": True}))
    with pytest.raises(RunMismatch, match=r"train\.lr: 0\.005 -> 0\.001.*train\.seed: 0 -> 4"):
        claim_run(replace(make_job(prepared_dataset, storage, "taken", epochs=1, lr=1e-3),
                          train=TrainConfig(epochs=1, batch_size=64, lr=1e-3, seed=4)))
    with pytest.raises(RunMismatch, match=r"^run 'taken' .*model: dien -> din"):
        claim_run(replace(make_job(prepared_dataset, storage, "taken", epochs=1), model="din"))


def test_a_checkpoint_of_another_run_is_refused_by_the_worker(prepared_dataset):
    dataset = prepared_dataset
    job = make_job(dataset, "unused", "any", epochs=1)
    recorded = job.identity(dataset)
    assert identity_differences(recorded, replace(job, train=replace(job.train, epochs=5)).identity(dataset)) == []
    other = replace(job, model_options={**job.model_options, "history_sum": False}).identity(dataset)
    assert identity_differences(recorded, other) == ["model_config.history_sum: True -> False"]
    with pytest.raises(RunMismatch, match="history_sum: True -> False"):
        check_same_run(recorded, other, "any")


def test_ray_lines_that_say_nothing_are_dropped_and_the_rest_kept():
    drop_ray_noise()
    drop_ray_noise()  # once: a second call adds no second filter
    kept = []

    class Keep(logging.Handler):
        def emit(self, record):
            kept.append(record.getMessage())

    handler = Keep()
    for module in NOISE:
        for name in logger_names(module):
            assert sum(isinstance(f, DropMessages) for f in logging.getLogger(name).filters) == 1
    cleaner = logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner")
    # Ray's execution context logs through logging.getLogger(__file__).
    context, = [logging.getLogger(n) for n in logger_names("ray.train.v2._internal.execution.context")[1:]]
    for logger in (cleaner, context):
        logger.addHandler(handler)
    try:
        cleaner.warning("Failed to query Ray Train Controller actor state. State API may be temporarily unavailable. "
                        "Continuing to monitor.")
        cleaner.warning("Controller actor died; removing placement group pg-1")
        context.warning("Reporting training result 1: TrainingReport(metrics={...}) from rank 0")
        context.warning("something else")
    finally:
        for logger in (cleaner, context):
            logger.removeHandler(handler)
    assert kept == ["Controller actor died; removing placement group pg-1", "something else"]
