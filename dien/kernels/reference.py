"""Readable per-step recurrences: the specification every faster backend is tested against.

All functions take ``nn.GRU``-layout weights (``weight_ih [3H, I]``, ``weight_hh [3H, H]``, biases ``[3H]``,
gate order r, z, n) and left-aligned sequences: steps ``t >= lengths[b]`` are padding, leave the state
unchanged and write zeros to ``out``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

# (h, z, n, att_t) -> next state, all [B, H] except att_t [B, 1] (or None for a plain GRU).
StateUpdate = Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]


def gru_update(h: Tensor, z: Tensor, n: Tensor, att: Tensor | None) -> Tensor:
    """Plain GRU (paper Eq. 2-5): h' = (1 - z) * n + z * h, z being PyTorch's keep gate."""
    return (1 - z) * n + z * h


def augru_update(h: Tensor, z: Tensor, n: Tensor, att: Tensor) -> Tensor:
    """AUGRU (paper Eq. 11-12): the update gate u = 1 - z is scaled by the attention score.

    a = 0 keeps the state, a = 1 is exactly a GRU step.
    """
    update = att * (1 - z)
    return (1 - update) * h + update * n


def agru_update(h: Tensor, z: Tensor, n: Tensor, att: Tensor) -> Tensor:
    """AGRU (paper Eq. 10): the attention score replaces the update gate."""
    return (1 - att) * h + att * n


def augru_official_update(h: Tensor, z: Tensor, n: Tensor, att: Tensor) -> Tensor:
    """The AUGRU of the official TensorFlow code (``VecAttGRUCell``), not the paper's.

    It scales the *keep* gate by (1 - a): a = 0 gives a plain GRU step and a = 1 jumps to the candidate.
    Offered only for reproducing the official numbers.
    """
    keep = (1 - att) * z
    return keep * h + (1 - keep) * n


def recurrence(
    x: Tensor,
    att: Tensor | None,
    lengths: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    h0: Tensor | None = None,
    update: StateUpdate = gru_update,
) -> tuple[Tensor, Tensor]:
    """Run a GRU-family cell step by step.

    Args:
        x: [B, T, I] float input sequence.
        att: [B, T] attention scores, or None for a plain GRU.
        lengths: [B] int64 valid steps per row, 0 <= len <= T.
        h0: [B, H] initial state (zeros when None).
        update: how the gates combine into the next state.

    Returns:
        out: [B, T, H] states, zero at padded steps; h_last: [B, H] state after each row's last valid step.
    """
    return projected_recurrence(project(x, weight_ih, bias_ih), att, lengths, weight_hh, bias_hh, h0, update)


def project(x: Tensor, weight_ih: Tensor, bias_ih: Tensor) -> Tensor:
    """The input projections of every step: x [B, T, I] -> gi = x W_ih^T + b_ih [B, T, 3H]."""
    return x @ weight_ih.t() + bias_ih


def projected_recurrence(
    gi: Tensor,
    att: Tensor | None,
    lengths: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor,
    h0: Tensor | None = None,
    update: StateUpdate = gru_update,
) -> tuple[Tensor, Tensor]:
    """:func:`recurrence` from the input projections ``gi = x W_ih^T + b_ih`` [B, T, 3H] (gate order r, z, n)."""
    batch, steps, _ = gi.shape
    hidden = weight_hh.shape[1]
    h = gi.new_zeros(batch, hidden) if h0 is None else h0
    valid = torch.arange(steps, device=gi.device).unsqueeze(0) < lengths.to(gi.device).unsqueeze(1)
    outputs = []
    for t in range(steps):
        gh = h @ weight_hh.t() + bias_hh
        i_r, i_z, i_n = gi[:, t].chunk(3, dim=1)
        h_r, h_z, h_n = gh.chunk(3, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        att_t = None if att is None else att[:, t].unsqueeze(1)
        step_valid = valid[:, t].unsqueeze(1)
        h = torch.where(step_valid, update(h, z, n, att_t), h)
        outputs.append(torch.where(step_valid, h, torch.zeros_like(h)))
    if steps == 0:
        return gi.new_zeros(batch, 0, hidden), h
    return torch.stack(outputs, dim=1), h


def gru(
    x: Tensor,
    lengths: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    h0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference GRU; see :func:`recurrence` for shapes."""
    return recurrence(x, None, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0, gru_update)


def augru(
    x: Tensor,
    att: Tensor,
    lengths: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    h0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference AUGRU (paper Eq. 11-12); see :func:`recurrence` for shapes."""
    return recurrence(x, att, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0, augru_update)


def gru_projected(gi: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                  h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference GRU from input projections gi [B, T, 3H]; see :func:`projected_recurrence`."""
    return projected_recurrence(gi, None, lengths, weight_hh, bias_hh, h0, gru_update)


def augru_projected(gi: Tensor, att: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                    h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference AUGRU from input projections gi [B, T, 3H]; see :func:`projected_recurrence`."""
    return projected_recurrence(gi, att, lengths, weight_hh, bias_hh, h0, augru_update)


def augru_last(gi: Tensor, att: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
               h0: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """Reference AUGRU final states [B, H] from input projections gi [R, T, 3H], row b reading gi[rows[b]]
    (``rows`` None: gi[b])."""
    gathered = gi if rows is None else gi.index_select(0, rows)
    return projected_recurrence(gathered, att, lengths, weight_hh, bias_hh, h0, augru_update)[1]
