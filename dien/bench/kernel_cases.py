"""Seeded random recurrence inputs and one forward + backward pass: what the kernel tests compare and the
benchmark times."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dien.kernels import dispatch

OPS = ("gru", "augru")
"""The recurrences the benchmark times."""
ALL_OPS = OPS + ("gru_projected", "augru_projected")
"""What the tests compare across backends: ``*_projected`` run :func:`dien.kernels.project` first, so their
gradients reach ``x``, ``weight_ih`` and ``bias_ih`` through it."""


@dataclass
class RecurrenceInputs:
    """Arguments of :func:`dien.kernels.gru` / :func:`dien.kernels.augru` and the upstream gradients.

    x: [B, T, I]; att: [B, T]; lengths: [B] int64; weights in ``nn.GRU`` layout; h0: [B, H] or None;
    grad_out: [B, T, H] and grad_h_last: [B, H], the gradients a loss would send back.
    """

    x: Tensor
    att: Tensor
    lengths: Tensor
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor
    bias_hh: Tensor
    h0: Tensor | None
    grad_out: Tensor
    grad_h_last: Tensor

    def leaves(self) -> dict[str, Tensor]:
        """The differentiable inputs by name."""
        names = ("x", "att", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def make_inputs(batch: int, steps: int, inputs: int, hidden: int, *, with_h0: bool = False,
                full_lengths: bool = False, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                seed: int = 0) -> RecurrenceInputs:
    """Random inputs; weights drawn like ``nn.GRU``'s.

    Lengths are uniform in [0, T] with the first row empty and the last one full, or all T with ``full_lengths``.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(*shape: int, bound: float = 1.0) -> Tensor:
        return (torch.rand(*shape, generator=generator) * 2 - 1) * bound

    bound = 1 / math.sqrt(hidden)
    if full_lengths:
        lengths = torch.full((batch,), steps, dtype=torch.int64)
    else:
        lengths = torch.randint(0, steps + 1, (batch,), generator=generator)
        lengths[0] = 0
        lengths[-1] = steps
    case = RecurrenceInputs(
        x=torch.randn(batch, steps, inputs, generator=generator),
        att=torch.rand(batch, steps, generator=generator),
        lengths=lengths,
        weight_ih=uniform(3 * hidden, inputs, bound=bound),
        weight_hh=uniform(3 * hidden, hidden, bound=bound),
        bias_ih=uniform(3 * hidden, bound=bound),
        bias_hh=uniform(3 * hidden, bound=bound),
        h0=torch.randn(batch, hidden, generator=generator) if with_h0 else None,
        grad_out=torch.randn(batch, steps, hidden, generator=generator),
        grad_h_last=torch.randn(batch, hidden, generator=generator),
    )
    for name in ("x", "att", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0", "grad_out", "grad_h_last"):
        value = getattr(case, name)
        if value is not None:
            setattr(case, name, value.to(device, dtype))
    case.lengths = case.lengths.to(device)
    for tensor in case.leaves().values():
        tensor.requires_grad_()
    return case


def run(op: str, case: RecurrenceInputs, backend: str | None) -> tuple[Tensor, Tensor]:
    """``op`` ("gru" or "augru") on ``case``: (out [B, T, H], h_last [B, H])."""
    weights = (case.weight_ih, case.weight_hh, case.bias_ih, case.bias_hh)
    if op == "gru":
        return dispatch.gru(case.x, case.lengths, *weights, h0=case.h0, backend=backend)
    if op == "augru":
        return dispatch.augru(case.x, case.att, case.lengths, *weights, h0=case.h0, backend=backend)
    if op in ("gru_projected", "augru_projected"):
        gi = dispatch.project(case.x, case.weight_ih, case.bias_ih, backend=backend)
        if op == "gru_projected":
            return dispatch.gru_projected(gi, case.lengths, case.weight_hh, case.bias_hh, h0=case.h0, backend=backend)
        return dispatch.augru_projected(gi, case.att, case.lengths, case.weight_hh, case.bias_hh, h0=case.h0,
                                        backend=backend)
    raise ValueError(f"unknown recurrence {op!r}; choose one of {', '.join(ALL_OPS)}")


def forward_backward(op: str, case: RecurrenceInputs, backend: str | None) -> dict[str, Tensor]:
    """Outputs and input gradients of one pass: ``out``, ``h_last`` and ``grad_<leaf>`` for every leaf, zeros
    where a leaf does not affect the outputs (``att`` of the GRU, everything but ``h0`` without steps)."""
    for tensor in case.leaves().values():
        tensor.grad = None
    out, h_last = run(op, case, backend)
    # With no steps the reference's out is a fresh empty tensor outside the graph.
    pairs = [(output, grad) for output, grad in ((out, case.grad_out), (h_last, case.grad_h_last))
             if output.requires_grad]
    if pairs:
        torch.autograd.backward(*zip(*pairs))
    results = {"out": out.detach(), "h_last": h_last.detach()}
    results.update({f"grad_{name}": torch.zeros_like(tensor) if tensor.grad is None else tensor.grad
                    for name, tensor in case.leaves().items()})
    return results
