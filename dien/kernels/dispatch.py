"""Backend selection for :func:`gru` and :func:`augru`.

``backend=None`` picks the fastest backend available for the tensors' device; the ``DIEN_KERNEL``
environment variable overrides that choice for every call.
"""
from __future__ import annotations

import os

from torch import Tensor

from dien.kernels import reference

BACKENDS = ("reference",)


def available_backends() -> tuple[str, ...]:
    """Backends this installation can run."""
    return BACKENDS


def resolve_backend(device_type: str, backend: str | None = None) -> str:
    """The backend to run on ``device_type`` ("cpu" or "cuda"), honouring ``DIEN_KERNEL``."""
    chosen = os.environ.get("DIEN_KERNEL") or backend or "reference"
    if chosen not in BACKENDS:
        raise ValueError(f"unknown kernel backend {chosen!r}; choose one of {', '.join(BACKENDS)}")
    return chosen


def _check(x: Tensor, lengths: Tensor, weight_ih: Tensor, weight_hh: Tensor, att: Tensor | None) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, I], got shape {tuple(x.shape)}")
    batch, steps, inputs = x.shape
    hidden = weight_hh.shape[1]
    if weight_ih.shape != (3 * hidden, inputs) or weight_hh.shape != (3 * hidden, hidden):
        raise ValueError(
            f"weights must be weight_ih [3H, I] and weight_hh [3H, H] for I={inputs}; got "
            f"{tuple(weight_ih.shape)} and {tuple(weight_hh.shape)}"
        )
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must be [B]={batch}, got shape {tuple(lengths.shape)}")
    if att is not None and att.shape != (batch, steps):
        raise ValueError(f"att must be [B, T]=({batch}, {steps}), got shape {tuple(att.shape)}")


def gru(
    x: Tensor,
    lengths: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    h0: Tensor | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """GRU over left-aligned sequences in ``nn.GRU`` layout.

    Args:
        x: [B, T, I] float. lengths: [B] int64, 0 <= len <= T. h0: [B, H] or None (zeros).
    Returns:
        out [B, T, H] (zeros at padded steps), h_last [B, H].
    """
    _check(x, lengths, weight_ih, weight_hh, None)
    resolve_backend(x.device.type, backend)
    return reference.gru(x, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0)


def augru(
    x: Tensor,
    att: Tensor,
    lengths: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    h0: Tensor | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """AUGRU (paper Eq. 11-12): like :func:`gru` with the update gate scaled by ``att`` [B, T]."""
    _check(x, lengths, weight_ih, weight_hh, att)
    resolve_backend(x.device.type, backend)
    return reference.augru(x, att, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0)
