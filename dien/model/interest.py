"""DIEN's two interest layers: the extractor (GRU + auxiliary loss) and the evolution (attention + GRU variant)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dien import kernels
from dien.kernels import reference
from dien.model.attention import build_attention
from dien.model.layers import MLP, valid_mask


def gru_weights(gru: nn.GRU) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The single-layer ``nn.GRU``'s parameters in the order the kernels take them."""
    return gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0


class InterestExtractor(nn.Module):
    """Interest extractor layer: a GRU over behavior embeddings (paper Eq. 2-5).

    The ``nn.GRU`` only holds the parameters (its layout and initialization); the recurrence runs in
    ``dien.kernels`` so that padded steps are exact and the fast backends apply.
    """

    def __init__(self, input_dim: int, hidden: int, aux_dims: tuple[int, ...] | None = (100, 50)) -> None:
        """``aux_dims=None`` builds no auxiliary network (models trained without the auxiliary loss)."""
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden, batch_first=True)
        self.aux_net = None if aux_dims is None else MLP(hidden + input_dim, aux_dims, act="sigmoid")

    def forward(self, behaviors: Tensor, lengths: Tensor) -> Tensor:
        """behaviors: [B, T, E], lengths: [B] -> interest states [B, T, H] (zero at padded steps)."""
        states, _ = kernels.gru(behaviors, lengths, *gru_weights(self.gru))
        return states

    def auxiliary_loss(self, states: Tensor, behaviors: Tensor, negatives: Tensor, lengths: Tensor) -> Tensor:
        """Paper Eq. 6-7: h_t must tell the next clicked behavior e[t+1] from a sampled negative.

        Mean over valid pairs (t, t+1), t + 1 < length; padding contributes to neither sum nor count.
        states: [B, T, H], behaviors and negatives: [B, T, E], lengths: [B] -> scalar.
        """
        pairs = auxiliary_pairs(lengths, states.shape[1])
        return self.pair_loss(states.reshape(-1, states.shape[2]).index_select(0, pairs),
                              *(x.reshape(-1, x.shape[2]).index_select(0, pairs + 1) for x in (behaviors, negatives)))

    def pair_loss(self, states: Tensor, clicked: Tensor, sampled: Tensor) -> Tensor:
        """The auxiliary loss of P pairs: states h_t [P, H], the next clicked behaviors e[t+1] and the sampled
        negatives [P, E] -> the mean over the pairs (0 without pairs)."""
        if self.aux_net is None:
            raise RuntimeError("this interest extractor was built without an auxiliary network (aux_dims=None)")
        # The first layer is linear in concat(h, e): its h part is computed once for the clicked and the sampled.
        first, rest = self.aux_net.layers[0], self.aux_net.layers[1:]
        weight_h, weight_e = first.weight.split([states.shape[1], clicked.shape[1]], dim=1)
        shared = F.linear(states, weight_h, first.bias)
        positive, negative = (rest(shared + F.linear(e, weight_e)).squeeze(-1) for e in (clicked, sampled))
        # -log sigmoid(p) - log(1 - sigmoid(n)), written with softplus for stability.
        per_pair = F.softplus(-positive) + F.softplus(negative)
        return per_pair.sum() / max(states.shape[0], 1)


def auxiliary_pairs(lengths: Tensor, steps: int) -> Tensor:
    """[P] int64 flat positions b * T + t of the valid auxiliary pairs (t, t + 1), t + 1 < lengths[b], in a
    [B, T] layout (the pair's next behavior is at position + 1)."""
    pairs = valid_mask((lengths - 1).clamp(min=0), steps - 1)
    rows, step = pairs.nonzero(as_tuple=True)
    return rows * steps + step


EVOLUTION_KINDS = ("augru", "agru", "aigru", "augru_official", "gru_attention")


class InterestEvolution(nn.Module):
    """Interest evolving layer: target attention over the interest states, then a GRU variant.

    kind:
        augru: paper Eq. 11-12 (DIEN). agru: Eq. 10. aigru: Eq. 9 (GRU over a_t * h_t).
        augru_official: the official TF code's cell (keep gate scaled by 1 - a), for reproduction only.
        gru_attention: the "two-layer GRU + attention" baseline, a second GRU whose outputs are attention-pooled.
    """

    def __init__(self, kind: str, state_dim: int, query_dim: int, hidden: int, attention: str) -> None:
        super().__init__()
        if kind not in EVOLUTION_KINDS:
            raise ValueError(f"unknown interest evolution {kind!r}; choose one of {', '.join(EVOLUTION_KINDS)}")
        self.kind = kind
        self.gru = nn.GRU(state_dim, hidden, batch_first=True)
        attention_dim = hidden if kind == "gru_attention" else state_dim
        self.attention = build_attention(attention, attention_dim, query_dim)
        self.out_dim = hidden

    def _weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        weights = gru_weights(self.gru)
        return agru_weights(*weights) if self.kind == "agru" else weights

    def project(self, states: Tensor) -> Tensor | None:
        """states [R, T, H] -> the GRU's input projections [R, T, 3H] for AUGRU and AGRU, which depend on the
        history only (computed once per request, shared by its candidates); None for the kinds whose GRU input
        depends on the candidate (aigru) or that run no AUGRU kernel."""
        if self.kind not in ("augru", "agru"):
            return None
        weight_ih, _, bias_ih, _ = self._weights()
        return kernels.project(states, weight_ih, bias_ih)

    def forward(self, states: Tensor, query: Tensor, lengths: Tensor, projected: Tensor | None = None,
                rows: Tensor | None = None) -> Tensor:
        """states: [B, T, H], query (target embedding): [B, D], lengths: [B] -> final interest [B, H'].

        projected: :meth:`project` of the states, or None (computed here). With ``rows`` [B], the states and
        the projections are per history, [R, T, H] and [R, T, 3H], and row b reads row rows[b] of both: the
        AUGRU and AGRU kernels and the bilinear attention read them in place.
        """
        weights = self._weights()
        if rows is not None and projected is None:
            states, rows = states.index_select(0, rows), None  # a recurrence over each row's own (gated) states
        if self.kind == "gru_attention":
            outputs, _ = kernels.gru(states, lengths, *weights)
            att = self.attention(query, outputs, lengths)
            return torch.bmm(att.unsqueeze(1), outputs).squeeze(1)
        att = self.attention(query, states, lengths, rows)
        if self.kind in ("augru", "agru"):
            if projected is None:
                _, final = kernels.augru(states, att, lengths, *weights)
            else:
                final = kernels.augru_last(projected, att, lengths, weights[1], weights[3], rows=rows)
        elif self.kind == "aigru":
            _, final = kernels.gru(states * att.unsqueeze(2), lengths, *weights)
        else:
            _, final = reference.recurrence(states, att, lengths, *weights, update=reference.augru_official_update)
        return final


def agru_weights(weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor) -> tuple[Tensor, ...]:
    """Weights that make the AUGRU kernel compute AGRU (paper Eq. 10).

    AGRU is AUGRU with the update gate fixed at 1: zeroing the z rows and giving them a bias of -40 in
    total makes z = sigmoid(-40) ~ 4e-18, so 1 - z is exactly 1 in fp32 and bf16 while nothing overflows,
    and the fast kernels apply. The z rows receive zero gradient.
    """
    hidden = weight_hh.shape[1]
    keep = torch.ones(3 * hidden, 1, dtype=weight_ih.dtype, device=weight_ih.device)
    keep[hidden : 2 * hidden] = 0
    shift = (1 - keep.squeeze(1)) * -20.0
    return weight_ih * keep, weight_hh * keep, bias_ih * keep.squeeze(1) + shift, bias_hh * keep.squeeze(1) + shift
