"""Backend selection for :func:`gru` and :func:`augru`.

``backend=None`` picks the fastest backend for the tensors' device: ``triton`` for CUDA tensors when Triton
imports, else ``cpu`` (plain PyTorch with a hand-written backward, which also runs on CUDA tensors). The
``DIEN_KERNEL`` environment variable overrides the choice for every call. Triton is imported on first use only:
it is optional, slow to import, and ``TRITON_INTERPRET`` must be set before its kernels are defined.
"""
from __future__ import annotations

import functools
import os
from types import ModuleType

import torch
from torch import Tensor

from dien.kernels import cpu, reference

BACKENDS = ("reference", "cpu", "triton")


@functools.cache
def _triton_backend() -> ModuleType | None:
    """The Triton backend module, or None where Triton does not import."""
    try:
        from dien.kernels import triton_recurrence
    except ImportError:
        return None
    return triton_recurrence


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available_backends() -> tuple[str, ...]:
    """Backends this installation can run: ``triton`` needs Triton and a CUDA device (or the interpreter)."""
    runs_triton = _triton_backend() is not None and (torch.cuda.is_available() or _triton_interpreting())
    return BACKENDS if runs_triton else ("reference", "cpu")


def resolve_backend(device_type: str, backend: str | None = None) -> str:
    """The backend to run on ``device_type`` ("cpu" or "cuda"), honouring ``DIEN_KERNEL``."""
    chosen = os.environ.get("DIEN_KERNEL") or backend
    if chosen is None:
        return "triton" if device_type == "cuda" and _triton_backend() is not None else "cpu"
    if chosen not in BACKENDS:
        raise ValueError(f"unknown kernel backend {chosen!r}; choose one of {', '.join(BACKENDS)}")
    if chosen == "triton":
        if _triton_backend() is None:
            raise ValueError("kernel backend 'triton' needs the triton package, which does not import here")
        if device_type != "cuda" and not _triton_interpreting():
            raise ValueError(f"kernel backend 'triton' runs on CUDA tensors (or under TRITON_INTERPRET=1), "
                             f"got {device_type} tensors")
    return chosen


def _implementation(name: str) -> ModuleType:
    return _triton_backend() if name == "triton" else {"reference": reference, "cpu": cpu}[name]


def compute_dtype(backend: str, device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype ``backend`` computes the recurrence in for inputs of ``dtype``: under autocast its bf16 when
    the backend has a bf16 path (triton: bf16 inputs, fp32 accumulation and state), else fp32; outside
    autocast the inputs' own dtype."""
    if not torch.is_autocast_enabled(device_type):
        return dtype
    if backend == "triton" and torch.get_autocast_dtype(device_type) == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def _run(name: str, x: Tensor, att: Tensor | None, lengths: Tensor, *weights_and_h0: Tensor | None
         ) -> tuple[Tensor, Tensor]:
    """Backend ``name`` on the inputs cast to its compute dtype, with autocast off inside it: under autocast
    the recurrence runs as the kernel benchmark measures it (the same dtype for x, att, weights and h0), not
    with autocast re-casting single matmuls inside the Function."""
    dtype = compute_dtype(name, x.device.type, x.dtype)
    implementation = _implementation(name)
    cast = [None if t is None else t.to(dtype) for t in (x, att, *weights_and_h0)]
    with torch.autocast(x.device.type, enabled=False):
        if att is None:
            return implementation.gru(cast[0], lengths, *cast[2:])
        return implementation.augru(cast[0], cast[1], lengths, *cast[2:])


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
        backend: "reference", "cpu", "triton" or None (the fastest for ``x.device``); ``DIEN_KERNEL`` overrides.
    Returns:
        out [B, T, H] (zeros at padded steps), h_last [B, H], in :func:`compute_dtype` (under bf16 autocast:
        bf16 from triton, fp32 from the others).
    """
    _check(x, lengths, weight_ih, weight_hh, None)
    return _run(resolve_backend(x.device.type, backend), x, None, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0)


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
    return _run(resolve_backend(x.device.type, backend), x, att, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0)
