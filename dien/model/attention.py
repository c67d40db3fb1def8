"""Target attention over a behavior or interest sequence; weights are a softmax over valid steps only."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dien.model.layers import MLP, valid_mask


def masked_softmax(scores: Tensor, lengths: Tensor) -> Tensor:
    """Softmax over steps t < lengths[b] of scores [B, T]; padded steps and empty rows get weight 0."""
    mask = valid_mask(lengths, scores.shape[1])
    weights = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=1)
    return weights * mask


def scores_against_rows(queries: Tensor, states: Tensor, rows: Tensor) -> Tensor:
    """queries [B, H], states [R, T, H], rows [B] -> [B, T]: queries[b] . states[rows[b], t] for every step,
    without copying each row's states per query (the queries of each of the R rows padded into one [R, Q, H]
    block and multiplied with the states at once)."""
    if states.shape[0] == 1:
        return queries @ states[0].t()
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=states.shape[0])
    ordered_rows = rows[order]
    slots = torch.arange(len(rows), device=rows.device) - (torch.cumsum(counts, 0) - counts)[ordered_rows]
    block = queries.new_zeros(states.shape[0], int(counts.max()), queries.shape[1])
    block[ordered_rows, slots] = queries[order]
    scores = torch.empty(len(rows), states.shape[1], dtype=queries.dtype, device=queries.device)
    scores[order] = torch.bmm(block, states.transpose(1, 2))[ordered_rows, slots]
    return scores


class BilinearAttention(nn.Module):
    """Paper Eq. 8: a_t = softmax_t(h_t W e_a)."""

    def __init__(self, state_dim: int, query_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(state_dim, query_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, query: Tensor, states: Tensor, lengths: Tensor, rows: Tensor | None = None) -> Tensor:
        """query: [B, D], states: [B, T, H] (with ``rows`` [B]: [R, T, H], row b reads states[rows[b]]),
        lengths: [B] -> weights [B, T]."""
        projected = query @ self.weight.t()
        if rows is None:
            scores = torch.bmm(states, projected.unsqueeze(2)).squeeze(2)
        else:
            scores = scores_against_rows(projected, states, rows)
        return masked_softmax(scores, lengths)


class MLPAttention(nn.Module):
    """DIN's activation unit, as in the official code: an MLP on [q, h, q - h, q * h], softmax over steps.

    The query is first projected to the state size when the two differ.
    """

    def __init__(self, state_dim: int, query_dim: int, dims: tuple[int, ...] = (80, 40)) -> None:
        super().__init__()
        self.project = nn.Identity() if state_dim == query_dim else nn.Linear(query_dim, state_dim)
        self.score = MLP(4 * state_dim, dims, act="sigmoid")

    def forward(self, query: Tensor, states: Tensor, lengths: Tensor, rows: Tensor | None = None) -> Tensor:
        """query: [B, D], states: [B, T, H] (with ``rows`` [B]: [R, T, H], row b reads states[rows[b]]),
        lengths: [B] -> weights [B, T]."""
        if rows is not None:
            states = states.index_select(0, rows)  # the MLP reads every (query, state) pair anyway
        q = self.project(query).unsqueeze(1).expand_as(states)
        scores = self.score(torch.cat([q, states, q - states, q * states], dim=-1))
        return masked_softmax(scores, lengths)


def build_attention(kind: str, state_dim: int, query_dim: int) -> nn.Module:
    if kind == "bilinear":
        return BilinearAttention(state_dim, query_dim)
    if kind == "mlp":
        return MLPAttention(state_dim, query_dim)
    raise ValueError(f"unknown attention {kind!r}; choose bilinear or mlp")
