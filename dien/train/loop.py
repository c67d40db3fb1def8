"""The training step and evaluation every trainer shares (single process here, Ray Train workers later)."""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from dien.data.batch import Batch, collate
from dien.data.epochs import OrderConfig, SampleOrder, TableUnits, read_ahead
from dien.model.base import CTRModel
from dien.train.metrics import ranking_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    """Passes over the training samples (at most, with ``patience``)."""
    batch_size: int = 128
    """Samples per optimizer step (per worker when distributed)."""
    lr: float = 5e-3
    """Adam learning rate of the first epoch (the paper: 1e-3)."""
    lr_decay: float = 0.85
    """Multiplier applied to the learning rate after every epoch (the paper halves it)."""
    aux_weight: float = 0.3
    """alpha of L = L_target + alpha * L_aux (the paper: 1); only models with an auxiliary loss use it."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value; None disables clipping."""
    eval_batch_size: int = 1024
    """Samples per forward pass during evaluation."""
    patience: int | None = 2
    """Early stopping: end training after this many epochs without a better validation AUC and keep the best
    epoch's weights. None trains every epoch and keeps the last weights."""
    seed: int = 0
    """Seed of the model initialization and the shuffling."""
    shuffle_window: int = 262_144
    """Samples per worker shuffled together each epoch, after a global permutation of the data's row groups
    (``dien.data.epochs``); they are held in memory together."""
    length_buckets: int = 0
    """Batch samples of similar history length: sort groups of this many batches by length before cutting
    them, and train the batches in a random order (0: off)."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("need epochs >= 1 and batch_size >= 1")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be at least 1 epoch (or None to train every epoch)")
        self.order()

    def order(self) -> OrderConfig:
        """The sample order these settings give (one per epoch, from the seed)."""
        return OrderConfig(batch_size=self.batch_size, seed=self.seed, shuffle_window=self.shuffle_window,
                           length_buckets=self.length_buckets)


@dataclass
class StepResult:
    loss: float
    """Total loss of the step."""
    target_loss: float
    """Click cross-entropy."""
    aux_loss: float | None
    """Auxiliary loss (unweighted), None for models without one."""


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam and the per-epoch decay schedule (step the scheduler once per epoch)."""
    # The fused step (one kernel over all parameters) is the same update at a fifth of the per-tensor loop's time.
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    return optimizer, torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)


def train_step(model: torch.nn.Module, batch: Batch, optimizer: torch.optim.Optimizer, config: TrainConfig,
               precision: contextlib.AbstractContextManager | None = None) -> StepResult:
    """One optimizer step on ``batch``: L = BCE(logits, label) + aux_weight * L_aux (+ the model's extra loss).

    ``model`` may be a DDP wrapper around a :class:`CTRModel`. ``precision`` (e.g. a bf16 ``torch.autocast``)
    wraps the forward and the loss only: the backward and the optimizer step run outside it, as PyTorch's AMP
    recipe has it, so the recurrences' hand-written backwards keep their own dtypes.
    """
    model.train()
    with precision or contextlib.nullcontext():
        output = model(batch)
        target_loss = F.binary_cross_entropy_with_logits(output.logits.float(), batch.label)
        loss = target_loss
        if output.aux_loss is not None:
            loss = loss + config.aux_weight * output.aux_loss.float()
        if output.extra_loss is not None:
            loss = loss + output.extra_loss.float()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()
    return StepResult(
        loss=loss.item(),
        target_loss=target_loss.item(),
        aux_loss=None if output.aux_loss is None else output.aux_loss.item(),
    )


@dataclass
class Predictions:
    """Click probabilities with the users and labels they belong to, all [N]."""

    users: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray

    @classmethod
    def concat(cls, parts: Iterable["Predictions"]) -> "Predictions":
        parts = list(parts)
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) if parts else np.zeros(0)
                     for k in ("users", "labels", "probabilities")))

    def metrics(self) -> dict[str, float]:
        return ranking_metrics(self.users, self.labels, self.probabilities)


@torch.no_grad()
def predict(model: CTRModel, batches: Iterable[Batch], device: torch.device | str = "cpu") -> Predictions:
    """Scores every batch in eval mode."""
    model.eval()
    parts = []
    for batch in batches:
        probabilities = model.predict(batch.to(device))
        parts.append(Predictions(batch.user.numpy(), batch.label.numpy(), probabilities.float().cpu().numpy()))
    return Predictions.concat(parts)


def iterate_batches(table: pa.Table, batch_size: int) -> Iterator[Batch]:
    """Collated batches of an in-memory sample table, in its order (for evaluation)."""
    for start in range(0, table.num_rows, batch_size):
        yield collate(table.slice(start, batch_size))


class BestEpoch:
    """Early stopping on validation AUC: remembers the best epoch, its validation metrics and a copy of its
    weights."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.epoch = 0
        """1-based epoch of the best validation AUC so far (0: none yet)."""
        self.metrics: dict[str, float] = {}
        """That epoch's metrics (``valid_auc``, ...), so restoring its weights needs no re-evaluation."""
        self.state: dict[str, torch.Tensor] | None = None

    def update(self, model: torch.nn.Module, epoch: int, metrics: dict[str, float]) -> bool:
        """Record ``epoch``'s validation metrics (``metrics["valid_auc"]`` decides); True when training should
        stop."""
        if self.patience is None:
            return False
        if metrics["valid_auc"] > self.metrics.get("valid_auc", float("-inf")):
            self.epoch, self.metrics = epoch, dict(metrics)
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return epoch - self.epoch >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best epoch's weights into ``model`` (nothing when no epoch was recorded)."""
        if self.state is not None:
            model.load_state_dict(self.state)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "metrics": self.metrics, "model": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.metrics, self.state = state["epoch"], state["metrics"], state["model"]


@dataclass
class FitResult:
    epochs: list[dict[str, float]] = field(default_factory=list)
    """Per epoch: mean train loss, validation metrics, train samples/s."""
    train_seconds: float = 0.0
    """Time spent in training steps (batching included, evaluation excluded)."""
    train_samples: int = 0
    best_epoch: int | None = None
    """With early stopping, the epoch whose weights the model holds."""

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0


def fit(model: CTRModel, train: pa.Table, valid: pa.Table | None, config: TrainConfig,
        device: torch.device | str = "cpu") -> FitResult:
    """Single-process training on in-memory sample tables, evaluating on ``valid`` after every epoch; each
    epoch sees ``train`` in the order a one-worker Ray Train run would (``dien.data.epochs``).

    ``model`` must already be on ``device``; batches are moved there. With ``config.patience`` the model ends
    with the weights of its best validation epoch.
    """
    if config.patience is not None and valid is None:
        raise ValueError("early stopping (patience) needs a validation split")
    optimizer, scheduler = make_optimizer(model, config)
    result = FitResult()
    best = BestEpoch(config.patience)
    order = SampleOrder(TableUnits(train), config.order())
    for epoch in range(config.epochs):
        started = time.perf_counter()
        batches = read_ahead(collate(rows) for rows in order.read(order.plan(epoch, 0, 1)))
        losses = [train_step(model, batch.to(device), optimizer, config).loss for batch in batches]
        elapsed = time.perf_counter() - started
        scheduler.step()
        result.train_seconds += elapsed
        result.train_samples += train.num_rows
        summary = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "samples_per_second": train.num_rows / elapsed}
        if valid is not None:
            metrics = predict(model, iterate_batches(valid, config.eval_batch_size), device).metrics()
            summary.update({f"valid_{k}": v for k, v in metrics.items()})
        logger.info("epoch %(epoch)d: %(summary)s", {"epoch": epoch + 1, "summary": summary})
        result.epochs.append(summary)
        if valid is not None and best.update(model, epoch + 1, summary):
            logger.info("early stop: no better validation AUC since epoch %d", best.epoch)
            break
    if best.state is not None:
        best.restore(model)
        result.best_epoch = best.epoch
    return result


def fit_and_test(model: CTRModel, splits: Mapping[str, pa.Table], config: TrainConfig,
                 device: torch.device | str = "cpu") -> tuple[FitResult, dict[str, float]]:
    """:func:`fit` on ``splits["train"]``, validating on ``splits["valid"]`` every epoch, then the metrics of
    ``splits["test"]`` scored with the weights training ended with (the best epoch's under early stopping)."""
    result = fit(model, splits["train"], splits["valid"], config, device)
    return result, predict(model, iterate_batches(splits["test"], config.eval_batch_size), device).metrics()
