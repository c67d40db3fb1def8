"""Distillation: the hint trains the student and never the teacher; a distilled student learns, loads and scores."""
import copy

import pytest
import torch

from dien.artifacts import load_artifact, save_artifact
from dien.model import ModelConfig, build_model
from dien.train.distill import DistillationModel, DistillJob
from dien.train.distributed import ClusterConfig, export_artifact, run_training
from dien.train.evaluate import evaluate_artifact
from dien.train.loop import TrainConfig, iterate_batches, make_optimizer, train_step


def untrained_teacher_artifact(dataset, path, **options):
    config = ModelConfig(dataset.n_items, dataset.n_cats, **options)
    vocabularies = dataset.vocabularies()
    return save_artifact(path, build_model("dien", config), "dien", config, vocabularies.item,
                         vocabularies.category, dataset.max_len)


def pair(dataset, joint):
    torch.manual_seed(0)
    config = ModelConfig(dataset.n_items, dataset.n_cats)
    student = build_model("dien", ModelConfig(dataset.n_items, dataset.n_cats, hidden=8))
    teacher = build_model("dien", ModelConfig(dataset.n_items, dataset.n_cats, hidden=24))
    return DistillationModel(student, teacher, hint_weight=1.0, joint=joint, aux_weight=1.0), config


def gradients(module: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """d loss / d parameter of ``module``'s parameters (zeros where the loss does not reach)."""
    params = dict(module.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True, allow_unused=True)
    return {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(params.items(), grads)}


def test_the_hint_trains_the_student_and_never_the_teacher(small_dataset):
    batch = next(iterate_batches(small_dataset.splits["train"], 32))
    model, _ = pair(small_dataset, joint=True)
    model.train()
    losses = {}
    for weight in (0.0, 5.0):
        model.hint_weight = weight
        torch.manual_seed(1)
        losses[weight] = model(batch).extra_loss
    teacher = {weight: gradients(model.teacher, loss) for weight, loss in losses.items()}
    student = {weight: gradients(model.student, loss) for weight, loss in losses.items()}
    # The teacher's gradient is its own click and auxiliary losses', whatever the hint weighs ...
    assert all(torch.allclose(teacher[0.0][name], teacher[5.0][name]) for name in teacher[0.0])
    assert any(g.abs().sum() > 0 for g in teacher[0.0].values())
    # ... while the hint alone moves the student.
    assert all(g.abs().sum() == 0 for g in student[0.0].values())
    assert any(g.abs().sum() > 0 for g in student[5.0].values())


def test_the_hint_is_the_weighted_squared_logit_gap_and_vanishes_for_a_copy_of_the_teacher(small_dataset):
    batch = next(iterate_batches(small_dataset.splits["train"], 32))
    torch.manual_seed(0)
    teacher = build_model("dien", ModelConfig(small_dataset.n_items, small_dataset.n_cats, hidden=8))
    student = copy.deepcopy(teacher)
    model = DistillationModel(student, teacher, hint_weight=3.0, joint=False, aux_weight=1.0).eval()
    # The frozen teacher runs the kernels' inference path, the student their training path: equal to rounding.
    assert model(batch).extra_loss.item() == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        student.mlp.layers[-1].bias += 0.5  # every student logit 0.5 above the teacher's
    assert model(batch).extra_loss.item() == pytest.approx(3.0 * 0.25, rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters()), "a frozen teacher is never trained"


def test_joint_training_trains_both_but_frozen_keeps_the_teacher(small_dataset):
    batch = next(iterate_batches(small_dataset.splits["train"], 32))
    for joint in (True, False):
        model, _ = pair(small_dataset, joint=joint)
        before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
        optimizer, _ = make_optimizer(model, TrainConfig())
        train_step(model, batch, optimizer, TrainConfig())
        changed = any(not torch.equal(before[k], v) for k, v in model.teacher.state_dict().items())
        assert changed == joint
        assert not model.teacher.training or joint


def test_distilled_student_artifact_loads_and_scores(prepared_dataset, tmp_path):
    # A quick teacher, then a student distilled from it on two Ray Train workers.
    cluster = ClusterConfig(workers=2, storage=str(tmp_path / "runs"), run_name="teacher")
    teacher_job = DistillJob(data=str(prepared_dataset.path), model="dien", model_options={"hidden": 16},
                             train=TrainConfig(epochs=1, batch_size=64, lr=5e-3), cluster=cluster,
                             mode="joint", teacher_options={"hidden": 24})
    result = run_training(teacher_job)
    teacher_dir = tmp_path / "teacher"
    export_artifact(teacher_job, result, teacher_dir)

    job = DistillJob(data=str(prepared_dataset.path), model="dien", model_options={"hidden": 8},
                     train=TrainConfig(epochs=1, batch_size=64, lr=5e-3),
                     cluster=ClusterConfig(workers=2, storage=str(tmp_path / "runs"), run_name="student"),
                     teacher=str(teacher_dir), hint_weight=0.5)
    result = run_training(job)
    assert result.error is None
    student = load_artifact(export_artifact(job, result, tmp_path / "student", extra=job.describe()))
    assert student.config.hidden == 8
    distillation = student.manifest["extra"]["distillation"]
    assert distillation["mode"] == "frozen" and distillation["hint_weight"] == 0.5
    assert distillation["teacher"]["weights_sha256"] == load_artifact(teacher_dir).manifest["files"]["weights.safetensors"]
    metrics = evaluate_artifact(student, prepared_dataset)
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["logloss"] > 0


def test_frozen_student_starts_from_a_copy_of_the_teachers_embeddings(prepared_dataset, tmp_path):
    torch.manual_seed(0)
    teacher_dir = untrained_teacher_artifact(prepared_dataset, tmp_path / "teacher", hidden=24)
    job = DistillJob(data=str(prepared_dataset.path), model="dien", model_options={"hidden": 8},
                     teacher=str(teacher_dir))
    model = job.build(prepared_dataset)
    teacher_tables, student_tables = model.teacher.embedding.state_dict(), model.student.embedding.state_dict()
    assert all(torch.equal(student_tables[name], table) for name, table in teacher_tables.items())
    # A copy: training the student's tables leaves the frozen teacher's alone.
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(model.teacher.embedding.parameters(),
                                                             model.student.embedding.parameters()))
    assert job.describe()["distillation"]["init_embeddings"] is True

    fresh = DistillJob(**{**job.__dict__, "init_embeddings": False}).build(prepared_dataset)
    assert not torch.equal(fresh.student.embedding.state_dict()["items.weight"], teacher_tables["items.weight"])


def test_embeddings_of_another_width_are_refused_by_name(prepared_dataset, tmp_path):
    teacher_dir = untrained_teacher_artifact(prepared_dataset, tmp_path / "teacher", hidden=24, item_dim=12)
    job = DistillJob(data=str(prepared_dataset.path), model="dien", model_options={"hidden": 8},
                     teacher=str(teacher_dir))
    with pytest.raises(ValueError, match="embedding tables differ in shape"):
        job.build(prepared_dataset)
