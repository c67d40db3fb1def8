"""Backend selection for :func:`gru` and :func:`augru`.

``backend=None`` picks the fastest backend for the tensors' device: ``triton`` for CUDA tensors when Triton
imports, else ``cpu`` (plain PyTorch with a hand-written backward, which also runs on CUDA tensors). The
``DIEN_KERNEL`` environment variable overrides the choice for every call, and :func:`use_backend` overrides both
inside a block (tracing for export needs the reference's plain tensor ops). Triton is imported on first use only:
it is optional, slow to import, and ``TRITON_INTERPRET`` must be set before its kernels are defined.
"""
from __future__ import annotations

import contextlib
import functools
import os
from contextvars import ContextVar
from types import ModuleType
from typing import Iterator

import torch
from torch import Tensor

from dien.kernels import cpu, reference

BACKENDS = ("reference", "cpu", "triton")

_BLOCK_BACKEND: ContextVar[str | None] = ContextVar("dien_kernel_backend", default=None)


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


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Every recurrence called inside the block runs on backend ``name``, whatever ``DIEN_KERNEL`` or the call
    says (e.g. ``reference`` while ``torch.export`` traces a model: the fast backends are opaque Functions)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    token = _BLOCK_BACKEND.set(name)
    try:
        yield
    finally:
        _BLOCK_BACKEND.reset(token)


def resolve_backend(device_type: str, backend: str | None = None) -> str:
    """The backend to run on ``device_type`` ("cpu" or "cuda"), honouring :func:`use_backend`, then
    ``DIEN_KERNEL``."""
    chosen = _BLOCK_BACKEND.get() or os.environ.get("DIEN_KERNEL") or backend
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


def _run(name: str, function: str, *args: Tensor | None) -> tuple[Tensor, Tensor]:
    """``function`` of backend ``name`` on ``args`` (``lengths`` is left as it is, every other tensor is cast to
    the backend's compute dtype), with autocast off inside it: under autocast the recurrence runs as the kernel
    benchmark measures it (the same dtype for every input), not with autocast re-casting single matmuls inside
    the Function."""
    first = args[0]
    dtype = compute_dtype(name, first.device.type, first.dtype)
    cast = [t if t is None or not t.is_floating_point() else t.to(dtype) for t in args]
    with torch.autocast(first.device.type, enabled=False):
        return getattr(_implementation(name), function)(*cast)


def _check(x: Tensor, lengths: Tensor, weight_ih: Tensor | None, weight_hh: Tensor, att: Tensor | None) -> None:
    """Shapes of the inputs; ``weight_ih`` None: ``x`` are the input projections [B, T, 3H]."""
    if x.dim() != 3:
        name = "x" if weight_ih is not None else "gi"
        raise ValueError(f"{name} must be [B, T, {'I' if weight_ih is not None else '3H'}], got shape {tuple(x.shape)}")
    batch, steps, inputs = x.shape
    hidden = weight_hh.shape[1]
    if weight_hh.shape != (3 * hidden, hidden):
        raise ValueError(f"weight_hh must be [3H, H], got {tuple(weight_hh.shape)}")
    if weight_ih is None and inputs != 3 * hidden:
        raise ValueError(f"gi must be [B, T, 3H] = [{batch}, {steps}, {3 * hidden}] for weight_hh "
                         f"{tuple(weight_hh.shape)}, got shape {tuple(x.shape)}")
    if weight_ih is not None and weight_ih.shape != (3 * hidden, inputs):
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
    return _run(resolve_backend(x.device.type, backend), "gru", x, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0)


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
    return _run(resolve_backend(x.device.type, backend), "augru", x, att, lengths, weight_ih, weight_hh, bias_ih,
                bias_hh, h0)


def project(x: Tensor, weight_ih: Tensor, bias_ih: Tensor, backend: str | None = None) -> Tensor:
    """The input projections ``x W_ih^T + b_ih`` [B, T, 3H] of every step, in the layout and the compute dtype
    of ``backend``: computed once, they can feed many :func:`gru_projected` / :func:`augru_projected` calls (a
    server projects each request's history once and shares it across the request's candidates)."""
    if x.dim() != 3 or weight_ih.dim() != 2 or weight_ih.shape[1] != x.shape[2]:
        raise ValueError(f"x must be [B, T, I] and weight_ih [3H, I]; got {tuple(x.shape)} and "
                         f"{tuple(weight_ih.shape)}")
    return _run(resolve_backend(x.device.type, backend), "project", x, weight_ih, bias_ih)


def gru_projected(
    gi: Tensor,
    lengths: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor,
    h0: Tensor | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`gru` from the input projections ``gi = x W_ih^T + b_ih`` [B, T, 3H] (e.g. :func:`project`'s)."""
    _check(gi, lengths, None, weight_hh, None)
    return _run(resolve_backend(gi.device.type, backend), "gru_projected", gi, lengths, weight_hh, bias_hh, h0)


def augru_projected(
    gi: Tensor,
    att: Tensor,
    lengths: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor,
    h0: Tensor | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`augru` from the input projections ``gi = x W_ih^T + b_ih`` [B, T, 3H] (e.g. :func:`project`'s)."""
    _check(gi, lengths, None, weight_hh, att)
    return _run(resolve_backend(gi.device.type, backend), "augru_projected", gi, att, lengths, weight_hh, bias_hh,
                h0)


def augru_last(
    gi: Tensor,
    att: Tensor,
    lengths: Tensor,
    weight_hh: Tensor,
    bias_hh: Tensor,
    h0: Tensor | None = None,
    rows: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """The final states h_last [B, H] of :func:`augru_projected`, the rows' input projections read through
    ``rows`` [B] (row b uses gi[rows[b]] of gi [R, T, 3H]; None: R = B): candidates that share a request's
    history share its projections without a copy. att [B, T], lengths [B]. On the CPU backend an inference call
    runs each row only through its own length and saves nothing for a backward."""
    batch = att.shape[0]
    if rows is None:
        _check(gi, lengths, None, weight_hh, att)
    else:
        if rows.shape != (batch,):
            raise ValueError(f"rows must be [B]={batch}, got shape {tuple(rows.shape)}")
        _check(gi[:1].expand(batch, -1, -1), lengths, None, weight_hh, att)
        if batch and (int(rows.min()) < 0 or int(rows.max()) >= gi.shape[0]):
            raise ValueError(f"rows must index gi's {gi.shape[0]} rows, got values from {int(rows.min())} to "
                             f"{int(rows.max())}")
    return _run(resolve_backend(gi.device.type, backend), "augru_last", gi, att, lengths, weight_hh, bias_hh, h0,
                rows)
