"""What every CTR model here shares: the split into a candidate-independent history encoding and a
per-candidate score, so a server encodes each request's history once and scores many candidates."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import Tensor, nn

from dien.data.batch import Batch


TIME_FIELDS = ("behaviors", "states", "evolution_inputs", "categories")
"""The :class:`HistoryEncoding` tensors with a time axis (dim 1)."""
PER_HISTORY = ("states", "evolution_inputs")
"""The tensors :meth:`HistoryEncoding.select` leaves per history (DIEN's score reads them in place)."""


@dataclass
class HistoryEncoding:
    """Per-request work that does not depend on the candidate.

    behaviors: [R, T, E] embeddings; lengths: [R]; behavior_sum: [R, E] sum pooling;
    states: [R, T, H] interest states (sequence models only);
    evolution_inputs: [R, T, 3H] the interest evolution GRU's input projections of the states (DIEN with
    AUGRU or AGRU: they depend on the history only, so a request computes them once for all its candidates);
    history_rows: the history each row reads in :data:`PER_HISTORY` (None: row i reads row i). :meth:`select`
    leaves those tensors per history and records the rows, which attention and the kernels read in place;
    categories: [R, T] int64 each history's distinct categories, then zeros (Wide&Deep's cross features).
    """

    behaviors: Tensor
    lengths: Tensor
    behavior_sum: Tensor
    states: Tensor | None = None
    evolution_inputs: Tensor | None = None
    history_rows: Tensor | None = None
    categories: Tensor | None = None

    def select(self, index: Tensor, names: Sequence[str] | None = None) -> "HistoryEncoding":
        """Rows ``index`` [C] (e.g. each candidate's request) of the tensors ``names`` (default: all); the
        others are None, so a caller copies only what it reads (:attr:`CTRModel.score_reads`). The tensors of
        :data:`PER_HISTORY` are not copied: ``history_rows`` says which of their rows each selected row reads."""
        wanted = {f.name for f in fields(self)} if names is None else set(names)
        kept = (*PER_HISTORY, "history_rows")
        selected = {f.name: None if f.name not in wanted or f.name in kept or getattr(self, f.name) is None
                    else getattr(self, f.name).index_select(0, index) for f in fields(self)}
        shared = [name for name in PER_HISTORY if name in wanted and getattr(self, name) is not None]
        if shared:
            selected.update({name: getattr(self, name) for name in shared})
            selected["history_rows"] = index if self.history_rows is None else self.history_rows[index]
        return HistoryEncoding(**selected)

    def rows(self, names: Sequence[str]) -> list["HistoryEncoding"]:
        """Each row alone, [1, L, ...] cut to its own length L (at least one step), with only the tensors
        ``names``, as copies that outlive this batch's tensors (what a cache keeps)."""
        if self.history_rows is not None:
            raise ValueError("rows() splits an encoding of distinct histories, not a selection of them")
        kept = [f.name for f in fields(self) if f.name in names and f.name != "history_rows"
                and getattr(self, f.name) is not None]
        split = []
        for i, length in enumerate(self.lengths.tolist()):
            steps = max(int(length), 1)
            row = {f.name: None for f in fields(self)}
            for name in kept:
                value = getattr(self, name)[i:i + 1]
                row[name] = (value[:, :steps] if name in TIME_FIELDS else value).clone()
            split.append(HistoryEncoding(**row))
        return split

    @staticmethod
    def stack(rows: Sequence["HistoryEncoding"]) -> "HistoryEncoding":
        """Rows (of :meth:`rows`) zero-padded to the longest and stacked: one encoding that scores as the batches
        the rows came from did (a score reads no step past a row's length)."""
        stacked = {}
        for f in fields(HistoryEncoding):
            values = [getattr(r, f.name) for r in rows]
            if values[0] is None:
                stacked[f.name] = None
            elif f.name in TIME_FIELDS:
                # One call per field: a row's time fields all have its length, so each pads to the longest row.
                stacked[f.name] = nn.utils.rnn.pad_sequence([v[0] for v in values], batch_first=True)
            else:
                stacked[f.name] = torch.cat(values)
        return HistoryEncoding(**stacked)


@dataclass
class ModelOutput:
    """logits: [B] click logits; aux_loss: scalar auxiliary loss (DIEN only, else None);
    extra_loss: scalar loss terms a wrapper adds, already weighted (e.g. distillation's hint loss)."""

    logits: Tensor
    aux_loss: Tensor | None = None
    extra_loss: Tensor | None = None


class CTRModel(nn.Module):
    """Base class: subclasses define :meth:`encode_history` and :meth:`score`."""

    uses_negatives = False
    score_reads: tuple[str, ...] = ("behaviors", "lengths", "behavior_sum", "states", "evolution_inputs")
    """The :class:`HistoryEncoding` fields :meth:`score` reads (a server selects only these per candidate)."""

    def encode_history(self, hist_item: Tensor, hist_cat: Tensor, lengths: Tensor) -> HistoryEncoding:
        raise NotImplementedError

    def score(self, history: HistoryEncoding, target_item: Tensor, target_cat: Tensor) -> Tensor:
        """Logits [B] for targets [B] against the histories [B] they are paired with."""
        raise NotImplementedError

    def auxiliary_loss(self, history: HistoryEncoding, batch: Batch) -> Tensor | None:
        return None

    def forward(self, batch: Batch) -> ModelOutput:
        history = self.encode_history(batch.hist_item, batch.hist_cat, batch.lengths)
        logits = self.score(history, batch.target_item, batch.target_cat)
        aux = self.auxiliary_loss(history, batch) if self.training else None
        return ModelOutput(logits=logits, aux_loss=aux)

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        """Click probabilities [B]."""
        return torch.sigmoid(self.score(self.encode_history(batch.hist_item, batch.hist_cat, batch.lengths),
                                        batch.target_item, batch.target_cat))
