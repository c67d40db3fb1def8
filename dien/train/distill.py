"""Distillation (Rocket Launching, as the DIEN paper served it): a small student learns the clicks, its
auxiliary loss, and a hint from a large teacher's logits.

    L = L_click(student) + alpha * L_aux(student) + lambda * mean((z_student - stop_grad(z_teacher))^2)

Two modes: ``frozen`` distils a trained teacher artifact (the teacher is fixed, in eval mode); ``joint`` trains
teacher and student together from scratch (the paper's booster and light nets), the teacher with its own
click and auxiliary losses and the hint reaching only the student. In frozen mode the student starts from a copy
of the teacher's embedding tables by default: Rocket Launching's light net shares the booster's lower layers,
and the hidden-size compression leaves the embeddings' shape unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dien.artifacts import load_artifact, weights_file
from dien.data.batch import Batch
from dien.data.dataset_dir import DatasetDir
from dien.model import CTRModel, HistoryEncoding, ModelConfig, ModelOutput, build_model, resolve_config
from dien.train.distributed import TrainJob

MODES = ("frozen", "joint")


class DistillationModel(CTRModel):
    """Trains ``student``; scoring and evaluation use the student only."""

    def __init__(self, student: CTRModel, teacher: CTRModel, hint_weight: float, joint: bool, aux_weight: float) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.hint_weight = hint_weight
        self.joint = joint
        self.aux_weight = aux_weight
        if not joint:
            self.teacher.requires_grad_(False)

    def train(self, mode: bool = True) -> "DistillationModel":
        super().train(mode)
        if not self.joint:
            self.teacher.eval()
        return self

    def encode_history(self, hist_item: Tensor, hist_cat: Tensor, lengths: Tensor) -> HistoryEncoding:
        return self.student.encode_history(hist_item, hist_cat, lengths)

    def score(self, history: HistoryEncoding, target_item: Tensor, target_cat: Tensor) -> Tensor:
        return self.student.score(history, target_item, target_cat)

    def forward(self, batch: Batch) -> ModelOutput:
        student = self.student(batch)
        if self.joint:
            teacher = self.teacher(batch)
            teacher_logits = teacher.logits
            extra = F.binary_cross_entropy_with_logits(teacher.logits, batch.label)
            if teacher.aux_loss is not None:
                extra = extra + self.aux_weight * teacher.aux_loss
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(batch).logits
            extra = student.logits.new_zeros(())
        hint = (student.logits - teacher_logits.detach()).square().mean()
        return ModelOutput(logits=student.logits, aux_loss=student.aux_loss, extra_loss=extra + self.hint_weight * hint)


def copy_embeddings(teacher: CTRModel, student: CTRModel) -> None:
    """Load the teacher's item and category embedding tables into the student (same widths required)."""
    source, target = getattr(teacher, "embedding", None), getattr(student, "embedding", None)
    if source is None or target is None:
        raise ValueError("copying embeddings needs a teacher and a student with behavior embeddings "
                         "(DIN, DIEN or a pooling model)")
    try:
        target.load_state_dict(source.state_dict())
    except RuntimeError as error:
        raise ValueError(f"the teacher's and the student's embedding tables differ in shape ({error}); give the "
                         f"student the teacher's item_dim/cat_dim or turn off init_embeddings") from error


@dataclass(frozen=True)
class DistillJob(TrainJob):
    """A :class:`TrainJob` whose ``model``/``model_options`` describe the student."""

    teacher: str | None = None
    """frozen mode: the teacher artifact (trained on the same dataset)."""
    teacher_model: str = "dien"
    """joint mode: the teacher's registry name."""
    teacher_options: dict[str, Any] | None = None
    """joint mode: the teacher's ModelConfig fields (default: hidden 108)."""
    hint_weight: float = 0.1
    """lambda of the hint loss."""
    mode: str = "frozen"
    """frozen or joint."""
    init_embeddings: bool = True
    """frozen mode: the student's embedding tables start as a copy of the teacher's (then train on)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown distillation mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.mode == "frozen" and not self.teacher:
            raise ValueError("frozen distillation needs a teacher artifact (--teacher)")

    def with_absolute_paths(self) -> "DistillJob":
        job = super().with_absolute_paths()
        return replace(job, teacher=str(Path(self.teacher).resolve())) if self.teacher else job

    def build(self, dataset: DatasetDir) -> CTRModel:
        student = build_model(self.model, self.model_config(dataset))
        if self.mode == "frozen":
            artifact = load_artifact(self.teacher)
            vocabularies = dataset.vocabularies()
            if not (artifact.items.tokens.equals(vocabularies.item.tokens)
                    and artifact.categories.tokens.equals(vocabularies.category.tokens)):
                raise ValueError(f"teacher {self.teacher} was trained with other vocabularies than {dataset.path}")
            teacher = artifact.model
            if self.init_embeddings:
                copy_embeddings(teacher, student)
        else:
            options = self.teacher_options or {"hidden": 108}
            teacher = build_model(self.teacher_model, resolve_config(
                self.teacher_model, ModelConfig(dataset.n_items, dataset.n_cats, **options)))
        return DistillationModel(student, teacher, self.hint_weight, self.mode == "joint", self.train.aux_weight)

    def exported(self, trained: CTRModel, dataset: DatasetDir) -> tuple[CTRModel, str, ModelConfig]:
        return trained.student, self.model, self.model_config(dataset)

    def identity(self, dataset: DatasetDir) -> dict[str, Any]:
        return {**super().identity(dataset), **self.describe()}

    def describe(self) -> dict[str, Any]:
        """What the student artifact's manifest records about its distillation."""
        described: dict[str, Any] = {"mode": self.mode, "hint_weight": self.hint_weight}
        if self.mode == "frozen":
            described["init_embeddings"] = self.init_embeddings
            teacher = load_artifact(self.teacher)
            described["teacher"] = {"path": str(self.teacher), "name": teacher.name,
                                    "version": teacher.manifest["version"],
                                    "weights_sha256": teacher.manifest["files"][weights_file(teacher.manifest)],
                                    "hidden": teacher.config.hidden, "metrics": teacher.manifest["metrics"]}
        else:
            described["teacher"] = {"name": self.teacher_model, "options": self.teacher_options or {"hidden": 108}}
        return {"distillation": described}

