"""CPU backend: the GRU/AUGRU recurrence as one ``torch.autograd.Function`` with a hand-written backward.

The recurrence runs over packed sequences (:class:`Packing`): the batch's rows sorted by length, longest first,
and only their valid steps, step-major, so step t holds the rows still running and a batch costs its total
length, not rows x T (a batch of lengths uniform in 1..T is half padding). ``gru``/``augru`` pack the inputs and
project only the valid steps (one matmul); ``*_projected`` pack given projections (a server computes them once
per request and shares them across candidates). The outputs come back in the batch's own order and layout.
Forward: per step one GEMM for the running rows' three recurrent gates and the fused gate math, which saves
r, z, n and ``W_hn h + b_hn`` for the backward. Backward: a reverse-time loop, one GEMM a step
(``dh_{t-1} = dh_t (1 - u_t) + dG_t W_hh``) plus the gate derivatives from the saved gates; the weight
gradients are then one matmul each over all packed rows.

The two time loops run in a C++ extension (``cpu_recurrence.cpp``: the gate math fused into one pass, rows split
across the intra-op threads in ranges of equal total length) when ``make setup`` has built it (``python -m
dien.kernels.cpu --build``), and as PyTorch loops otherwise (no compiler, float64, non-CPU tensors).

Measured by ``jobs/bench_kernels.py --quick`` on the 2-core development machine (torch 2.13 CPU; B=128, T=100,
I=H=36, random lengths, fp32, 2 threads, best of 3 rounds; ``runs/bench_kernels_quick.json``), and again with
``DIEN_EXTENSION_DIR`` pointing at an empty directory, which leaves the PyTorch loops
(``runs/bench_kernels_quick_pytorch_loops.json``); forward + backward as the speed-up over the reference in the
same run, and DIEN training end to end:

    backend                          GRU    AUGRU   DIEN training, samples/s
    this Function, C++ loops         5.9x   6.6x    2,204 (reference 400)
    this Function, PyTorch loops     2.7x   2.3x    1,521 (reference 366)
    nn.GRU (oneDNN), padded input    2.5x   n/a

(This machine's rates drift by up to 30% between runs; the ratios within a run less.) Both loop versions do the
same GEMMs; what the PyTorch loops add is ~10 small elementwise calls a step plus the vectorized
gate-derivative pass of the backward, which the C++ pass replaces. The C++ loops build in under a minute with
g++ and ninja, and loading them never compiles, so an unbuilt extension only means the slower loops; the tests
run both.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

EXTENSION_SOURCE = Path(__file__).with_name("cpu_recurrence.cpp")
EXTENSION_FLAGS = ["-O3", "-ffast-math", "-fopenmp", "-march=native"]


@functools.cache
def cpu_signature() -> str:
    """What ``-march=native`` compiles for: the architecture and the instruction-set extensions of this CPU
    (the ``flags``/``Features`` line of ``/proc/cpuinfo``; the architecture alone where there is none)."""
    machine = os.uname().machine
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return machine
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return f"{machine} {' '.join(sorted(value.split()))}"
    return machine


def extension_name() -> str:
    """The extension's module name; it changes with the source, torch and the CPU's instruction set, so a stale
    build, or one compiled for another CPU (a moved environment would die of SIGILL), is never loaded."""
    key = b"\0".join([EXTENSION_SOURCE.read_bytes(), torch.__version__.encode(), cpu_signature().encode()])
    return f"dien_cpu_recurrence_{hashlib.sha256(key).hexdigest()[:12]}"


def extension_dir() -> Path:
    """Where the extension is built: ``DIEN_EXTENSION_DIR``, else ``dien-extensions`` in the environment."""
    return Path(os.environ.get("DIEN_EXTENSION_DIR") or Path(sys.prefix) / "dien-extensions") / extension_name()


def build_extension(verbose: bool = False) -> ModuleType:
    """Compile the C++ time loops (needs a C++ compiler and ninja; about a minute on 2 cores)."""
    from torch.utils.cpp_extension import load

    # ninja installed with pip into the environment is not on PATH unless the environment is activated.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    directory = extension_dir()
    directory.mkdir(parents=True, exist_ok=True)
    return load(extension_name(), [str(EXTENSION_SOURCE)], extra_cflags=EXTENSION_FLAGS,
                build_directory=str(directory), verbose=verbose)


def extension_path() -> Path:
    return extension_dir() / f"{extension_name()}.so"


@functools.cache
def _extension() -> ModuleType | None:
    """The built extension, or None: loading never compiles, so a missing build costs nothing at run time."""
    path = extension_path()
    if not path.exists():
        logger.info("dien CPU extension not built (%s); using the PyTorch time loops", path)
        return None
    spec = importlib.util.spec_from_file_location(extension_name(), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _uses_extension(tensor: Tensor) -> bool:
    return tensor.device.type == "cpu" and tensor.dtype == torch.float32 and _extension() is not None


@dataclass(frozen=True)
class Packing:
    """A batch's valid steps as packed rows: rows sorted by length, longest first, then step-major, so step t
    holds ``batch_sizes[t]`` rows, the running rows of step t - 1 that are still running, in the same order."""

    order: Tensor
    """[B] the batch's rows, longest first (stable); sorted row i is row order[i]."""
    inverse: Tensor
    """[B] where each row went: inverse[order[i]] = i."""
    lengths: Tensor
    """[B] int64 sorted lengths, clamped to [0, T]."""
    batch_sizes: Tensor
    """[T] int64 on the CPU: rows running at each step."""
    batch_major: Tensor
    """[N] packed row k is element b * T + t of a [B, T] layout."""
    time_major: Tensor
    """[N] the same element in a [T, B] layout: t * B + b."""
    last: Tensor
    """[B] the packed row of each sorted row's last step (0 for an empty row)."""

    @staticmethod
    def of(lengths: Tensor, batch: int, steps: int, device: torch.device) -> "Packing":
        lengths = lengths.to(device=device, dtype=torch.int64).clamp(0, steps)
        sorted_lengths, order = lengths.sort(descending=True, stable=True)
        running = torch.arange(steps, device=device).unsqueeze(1) < sorted_lengths.unsqueeze(0)  # [T, B]
        step, rank = running.nonzero(as_tuple=True)  # step-major, rank ascending within a step
        row = order[rank]
        sizes = running.sum(1)
        offsets = torch.cumsum(sizes, 0) - sizes
        rows = torch.arange(batch, device=device)
        last = offsets[(sorted_lengths - 1).clamp(min=0)] + rows if steps else torch.zeros_like(rows)
        inverse = torch.empty_like(order).scatter_(0, order, rows)
        return Packing(order, inverse, sorted_lengths, sizes.cpu(), row * steps + step, step * batch + row, last)

    def gather(self, x: Tensor) -> Tensor:
        """x [B, T, F] -> its packed rows [N, F]; a time-major x (what :func:`project` returns) is read in place."""
        if x.transpose(0, 1).is_contiguous():
            return x.transpose(0, 1).reshape(-1, x.shape[2]).index_select(0, self.time_major)
        return x.reshape(-1, x.shape[2]).index_select(0, self.batch_major)


def _forward_loop(gi: Tensor, att: Tensor | None, batch_sizes: Tensor, h0: Tensor, weight_hh: Tensor,
                  bias_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All steps of the recurrence over packed rows.

    gi [N, 3H]: packed input projections (b_ih included); att [N] or None (GRU); batch_sizes [T]; h0 [B, H] in
    sorted row order. Returns out [N, H] (the state after each packed step), prev [N, H] (the state before it)
    and gates [N, 4H]: r, z, n and ``W_hn h + b_hn`` of every packed step.
    """
    if _uses_extension(gi):
        return tuple(_extension().forward(gi, gi.new_empty(0) if att is None else att, batch_sizes, h0, weight_hh,
                                          bias_hh))
    rows, hidden = gi.shape[0], weight_hh.shape[1]
    gi = gi.view(rows, 3, hidden)
    gates = gi.new_empty(rows, 4, hidden)
    out, prev = gi.new_empty(rows, hidden), gi.new_empty(rows, hidden)
    gh = gi.new_empty(h0.shape[0], 3, hidden)
    weight_hh_t = weight_hh.t()
    sizes = batch_sizes.tolist()
    # Per-step views made once: slicing inside the loop would cost about as much as the step's arithmetic.
    per_step = zip(sizes, gi[:, :2].split(sizes), gi[:, 2].split(sizes), gates[:, :2].split(sizes),
                   gates[:, 0].split(sizes), gates[:, 1].split(sizes), gates[:, 2].split(sizes),
                   gates[:, 3].split(sizes), out.split(sizes), prev.split(sizes),
                   [None] * len(sizes) if att is None else att.unsqueeze(1).split(sizes))
    h = h0
    for size, gi_rz, gi_n, rz, r, z, n, hn, state, before, a in per_step:
        h = before.copy_(h[:size])
        gh_t = gh[:size]
        torch.addmm(bias_hh, h, weight_hh_t, out=gh_t.view(size, 3 * hidden))
        torch.add(gi_rz, gh_t[:, :2], out=rz).sigmoid_()
        hn.copy_(gh_t[:, 2])
        torch.addcmul(gi_n, r, hn, out=n).tanh_()
        if a is None:
            h = torch.lerp(n, h, z, out=state)  # (1 - z) n + z h
        else:
            h = torch.lerp(h, n, torch.addcmul(a, a, z, value=-1), out=state)  # u = a (1 - z)
    return out, prev, gates.view(rows, 4 * hidden)


def _backward_loop(gates: Tensor, prev: Tensor, att: Tensor | None, batch_sizes: Tensor, grad_out: Tensor,
                   weight_hh: Tensor, batch: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """All steps of the backward over packed rows.

    gates, prev: from :func:`_forward_loop`; grad_out [N, H]: the gradient of out. Returns the gradients of the
    hidden projections [N, 3H], of the input projection of n [N, H] (those of r and z equal the hidden ones),
    of att [N] (None for the GRU) and of h0 [B, H].
    """
    if _uses_extension(gates):
        grad_gh, grad_gi_n, grad_att, grad_h0 = _extension().backward(
            gates, prev, gates.new_empty(0) if att is None else att, batch_sizes, grad_out, weight_hh, batch)
        return grad_gh, grad_gi_n, None if att is None else grad_att, grad_h0
    rows, hidden = prev.shape
    r, z, n, hn = gates.view(rows, 4, hidden).unbind(1)
    diff = n - prev
    a = None if att is None else att.unsqueeze(1)
    update = 1 - z if a is None else a * (1 - z)
    d_n = update * (1 - n * n)  # d(pre-activation of n) / dh_t
    # Every gate gradient is linear in dh_t: dG_h = dh_t * coef (gate order r, z, n).
    coef = torch.stack([d_n * hn * r * (1 - r), (diff if a is None else a * diff) * z * (z - 1), d_n * r], dim=1)
    keep = 1 - update
    grad_gh = gates.new_empty(rows, 3, hidden)
    dstate = torch.empty_like(grad_out)  # total gradient of the state after each packed step
    dh = grad_out.new_zeros(batch, hidden)  # per sorted row, from later steps; zero before its last step
    sizes = batch_sizes.tolist()
    per_step = list(zip(sizes, dstate.split(sizes), grad_gh.split(sizes), coef.split(sizes), keep.split(sizes),
                        grad_out.split(sizes)))
    for size, d, grad_t, coef_t, keep_t, injected in reversed(per_step):
        later = dh[:size]
        torch.add(later, injected, out=d)
        torch.mul(d.unsqueeze(1), coef_t, out=grad_t)
        torch.addmm(d * keep_t, grad_t.view(size, 3 * hidden), weight_hh, out=later)
    grad_att = None if a is None else (dstate * diff * (1 - z)).sum(1)
    return grad_gh.view(rows, 3 * hidden), dstate * d_n, grad_att, dh


class PackedRecurrence(torch.autograd.Function):
    """The states ``out`` [N, H] of the GRU (``att`` None) or the AUGRU over packed rows (:class:`Packing`) from
    their input projections ``gi = x W_ih^T + b_ih`` [N, 3H]; h0 [B, H] in sorted row order. See the module
    docstring."""

    @staticmethod
    def forward(ctx, gi: Tensor, att: Tensor | None, batch_sizes: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                h0: Tensor) -> Tensor:
        weight_hh = weight_hh.contiguous()
        att = None if att is None else att.contiguous()
        out, prev, gates = _forward_loop(gi.contiguous(), att, batch_sizes, h0.contiguous(), weight_hh,
                                         bias_hh.contiguous())
        ctx.save_for_backward(att, batch_sizes, weight_hh, gates, prev)
        ctx.batch = h0.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        att, batch_sizes, weight_hh, gates, prev = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_gh, grad_gi_n, grad_att, grad_h0 = _backward_loop(gates, prev, att, batch_sizes, grad_out.contiguous(),
                                                               weight_hh, ctx.batch)
        hidden = prev.shape[1]
        grad_weight_hh = grad_gh.t() @ prev if needs[3] else None
        grad_bias_hh = grad_gh.sum(0) if needs[4] else None
        grad_gh[:, 2 * hidden:] = grad_gi_n  # now the input projections' gradient
        return (grad_gh if needs[0] else None, grad_att if needs[1] else None, None, grad_weight_hh, grad_bias_hh,
                grad_h0 if needs[5] else None)


def _run_packed(gi: Tensor, att: Tensor | None, packing: Packing, batch: int, steps: int, weight_hh: Tensor,
                bias_hh: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
    """The recurrence over packed projections gi [N, 3H] (att [N] or None), back in the batch's layout:
    out [B, T, H] (zero at padded steps) and h_last [B, H]."""
    hidden = weight_hh.shape[1]
    h0_sorted = gi.new_zeros(batch, hidden) if h0 is None else h0.index_select(0, packing.order)
    out = PackedRecurrence.apply(gi, att, packing.batch_sizes, weight_hh, bias_hh, h0_sorted)
    if out.shape[0]:
        h_last = torch.where((packing.lengths > 0).unsqueeze(1), out.index_select(0, packing.last), h0_sorted)
    else:
        h_last = h0_sorted
    padded = out.new_zeros(batch * steps, hidden).index_copy(0, packing.batch_major, out)
    return padded.view(batch, steps, hidden), h_last.index_select(0, packing.inverse)


def _packed_attention(att: Tensor, packing: Packing) -> Tensor:
    return att.reshape(-1).index_select(0, packing.batch_major)


def project(x: Tensor, weight_ih: Tensor, bias_ih: Tensor) -> Tensor:
    """The input projections ``x W_ih^T + b_ih`` of all steps, [B, T, 3H], as a view of a time-major tensor:
    one matmul, and :meth:`Packing.gather` reads it without a copy."""
    batch, steps, inputs = x.shape
    x_steps = x.transpose(0, 1).reshape(steps * batch, inputs)
    return torch.addmm(bias_ih, x_steps, weight_ih.t()).view(steps, batch, weight_ih.shape[0]).transpose(0, 1)


def gru(x: Tensor, lengths: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
        h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GRU over left-aligned sequences; shapes as :func:`dien.kernels.reference.recurrence`. Only the valid
    steps are projected and run."""
    batch, steps, _ = x.shape
    packing = Packing.of(lengths, batch, steps, x.device)
    gi = torch.addmm(bias_ih, packing.gather(x), weight_ih.t())
    return _run_packed(gi, None, packing, batch, steps, weight_hh, bias_hh, h0)


def augru(x: Tensor, att: Tensor, lengths: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
          bias_hh: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """AUGRU (paper Eq. 11-12); ``att`` [B, T]."""
    batch, steps, _ = x.shape
    packing = Packing.of(lengths, batch, steps, x.device)
    gi = torch.addmm(bias_ih, packing.gather(x), weight_ih.t())
    return _run_packed(gi, _packed_attention(att, packing), packing, batch, steps, weight_hh, bias_hh, h0)


def gru_projected(gi: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                  h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GRU from input projections gi [B, T, 3H] (e.g. from :func:`project`, or computed once and shared)."""
    batch, steps, _ = gi.shape
    packing = Packing.of(lengths, batch, steps, gi.device)
    return _run_packed(packing.gather(gi), None, packing, batch, steps, weight_hh, bias_hh, h0)


def augru_projected(gi: Tensor, att: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                    h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """AUGRU from input projections gi [B, T, 3H]; ``att`` [B, T]."""
    batch, steps, _ = gi.shape
    packing = Packing.of(lengths, batch, steps, gi.device)
    return _run_packed(packing.gather(gi), _packed_attention(att, packing), packing, batch, steps, weight_hh,
                       bias_hh, h0)


def augru_last(gi: Tensor, att: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
               h0: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """The AUGRU's final states h_last [B, H] from input projections gi [R, T, 3H]; row b reads gi[rows[b]]
    (``rows`` None: R = B, row b reads gi[b]). att [B, T], lengths [B].

    Without gradients (inference) the C++ loops run each row through its own length only and read gi through
    ``rows`` in place, saving nothing; with gradients, or without the extension, it is :func:`augru_projected`'s
    h_last on the gathered rows.
    """
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                 for t in (gi, att, weight_hh, bias_hh, h0))
    if not needs_grad and _uses_extension(gi):
        rows = torch.arange(att.shape[0], device=gi.device) if rows is None else rows.to(torch.int64)
        return _extension().forward_last(gi.contiguous(), rows.contiguous(), att.contiguous(),
                                         lengths.to(torch.int64).contiguous(),
                                         gi.new_empty(0) if h0 is None else h0.contiguous(),
                                         weight_hh.contiguous(), bias_hh.contiguous())
    gathered = gi if rows is None else gi.index_select(0, rows)
    return augru_projected(gathered, att, lengths, weight_hh, bias_hh, h0)[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build the CPU backend's C++ time loops.")
    parser.add_argument("--build", action="store_true", help="compile the extension into extension_dir()")
    parser.add_argument("--if-missing", action="store_true",
                        help="with --build: do nothing when this source, torch and CPU already have a build")
    args = parser.parse_args()
    if args.build:
        if args.if_missing and extension_path().exists():
            print(f"up to date: {extension_path()}")
        else:
            build_extension(verbose=True)
            print(f"built {extension_dir()}")
