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


class BilinearAttention(nn.Module):
    """Paper Eq. 8: a_t = softmax_t(h_t W e_a)."""

    def __init__(self, state_dim: int, query_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(state_dim, query_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, query: Tensor, states: Tensor, lengths: Tensor) -> Tensor:
        """query: [B, D], states: [B, T, H], lengths: [B] -> weights [B, T]."""
        projected = query @ self.weight.t()
        scores = torch.bmm(states, projected.unsqueeze(2)).squeeze(2)
        return masked_softmax(scores, lengths)


class MLPAttention(nn.Module):
    """DIN's activation unit, as in the official code: an MLP on [q, h, q - h, q * h], softmax over steps.

    The query is first projected to the state size when the two differ.
    """

    def __init__(self, state_dim: int, query_dim: int, dims: tuple[int, ...] = (80, 40)) -> None:
        super().__init__()
        self.project = nn.Identity() if state_dim == query_dim else nn.Linear(query_dim, state_dim)
        self.score = MLP(4 * state_dim, dims, act="sigmoid")

    def forward(self, query: Tensor, states: Tensor, lengths: Tensor) -> Tensor:
        """query: [B, D], states: [B, T, H], lengths: [B] -> weights [B, T]."""
        q = self.project(query).unsqueeze(1).expand_as(states)
        scores = self.score(torch.cat([q, states, q - states, q * states], dim=-1))
        return masked_softmax(scores, lengths)


def build_attention(kind: str, state_dim: int, query_dim: int) -> nn.Module:
    if kind == "bilinear":
        return BilinearAttention(state_dim, query_dim)
    if kind == "mlp":
        return MLPAttention(state_dim, query_dim)
    raise ValueError(f"unknown attention {kind!r}; choose bilinear or mlp")
