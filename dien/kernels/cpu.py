"""CPU backend: the GRU/AUGRU recurrence as one ``torch.autograd.Function`` with a hand-written backward.

Forward: the input projections of all steps are one matmul before the time loop; each step is one GEMM for the
three recurrent gates and the fused gate math, which saves r, z, n and ``W_hn h + b_hn`` for the backward.
Every row runs all T steps: sequences are left-aligned, so the steps after a row's length change neither its
outputs (masked afterwards) nor its last state (gathered at its length), and the loop needs no masking.
Backward: a reverse-time loop, one GEMM a step (``dh_{t-1} = dh_t (1 - u_t) + dG_t W_hh``) plus the gate
derivatives from the saved gates; the weight gradients are then one matmul each over all ``T * B`` rows. The
Function starts at the input projections (``*_projected``: a server computes them once per request and shares
them across candidates); ``gru``/``augru`` put the projection's matmul in front, and autograd differentiates it.

The two time loops run in a C++ extension (``cpu_recurrence.cpp``: the gate math fused into one pass, rows split
across the intra-op threads) when ``make setup`` has built it (``python -m dien.kernels.cpu --build``), and as
PyTorch loops otherwise (no compiler, float64, non-CPU tensors).

Measured by ``jobs/bench_kernels.py --quick`` on the 2-core development machine (torch 2.13 CPU; B=128, T=100,
I=H=36, random lengths, fp32, 2 threads, best of 3 rounds; ``runs/bench_kernels_quick.json``), and again with
``DIEN_EXTENSION_DIR`` pointing at an empty directory, which leaves the PyTorch loops
(``runs/bench_kernels_quick_pytorch_loops.json``); forward + backward as the speed-up over the reference in the
same run, and DIEN training end to end:

    backend                          GRU    AUGRU   DIEN training, samples/s
    this Function, C++ loops         5.6x   5.8x    1,898 (reference 469)
    this Function, PyTorch loops     2.7x   1.9x    1,482 (reference 527)
    nn.GRU (oneDNN), padded input    2.3x   n/a

Both loop versions do the same GEMMs; what the PyTorch loops add is ~10 small elementwise calls a step plus the
vectorized gate-derivative pass of the backward, which the C++ pass replaces. The C++ loops build in under a
minute with g++ and ninja, and loading them never compiles, so an unbuilt extension only means the slower
loops; the tests run both.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import logging
import os
import sys
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


def _forward_loop(gi: Tensor, att: Tensor | None, h0: Tensor, weight_hh: Tensor,
                  bias_hh: Tensor) -> tuple[Tensor, Tensor]:
    """All steps of the recurrence.

    gi [T, B, 3H]: input projections (b_ih included); att [T, B] or None (GRU); h0 [B, H].
    Returns states [T + 1, B, H] (states[t] is the state before step t) and gates [T, B, 4H]: r, z, n and
    ``W_hn h + b_hn`` of every step.
    """
    if _uses_extension(gi):
        return tuple(_extension().forward(gi, gi.new_empty(0) if att is None else att, h0, weight_hh, bias_hh))
    steps, batch, _ = gi.shape
    hidden = weight_hh.shape[1]
    gi = gi.view(steps, batch, 3, hidden)
    gates = gi.new_empty(steps, batch, 4, hidden)
    states = gi.new_empty(steps + 1, batch, hidden)
    states[0] = h0
    gh = gi.new_empty(batch, 3, hidden)
    weight_hh_t = weight_hh.t()
    # Per-step views made once: indexing inside the loop would cost about as much as the step's arithmetic.
    per_step = zip(gi[:, :, :2].unbind(0), gi[:, :, 2].unbind(0), gates[:, :, :2].unbind(0),
                   gates[:, :, 0].unbind(0), gates[:, :, 1].unbind(0), gates[:, :, 2].unbind(0),
                   gates[:, :, 3].unbind(0), states[1:].unbind(0),
                   [None] * steps if att is None else att.unsqueeze(2).unbind(0))
    h = states[0]
    for gi_rz, gi_n, rz, r, z, n, hn, state, a in per_step:
        torch.addmm(bias_hh, h, weight_hh_t, out=gh.view(batch, 3 * hidden))
        torch.add(gi_rz, gh[:, :2], out=rz).sigmoid_()
        hn.copy_(gh[:, 2])
        torch.addcmul(gi_n, r, hn, out=n).tanh_()
        if a is None:
            h = torch.lerp(n, h, z, out=state)  # (1 - z) n + z h
        else:
            h = torch.lerp(h, n, torch.addcmul(a, a, z, value=-1), out=state)  # u = a (1 - z)
    return states, gates.view(steps, batch, 4 * hidden)


def _backward_loop(gates: Tensor, states: Tensor, att: Tensor | None, injected: Tensor,
                   weight_hh: Tensor) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """All steps of the backward.

    gates, states: from :func:`_forward_loop`; injected [T, B, H]: what the outputs send to the state after
    each step. Returns the gradients of the hidden projections [T, B, 3H], of the input projection of n
    [T, B, H] (those of r and z equal the hidden ones), of att [T, B] (None for the GRU) and of h0 [B, H].
    """
    if _uses_extension(gates):
        grad_gh, grad_gi_n, grad_att, grad_h0 = _extension().backward(
            gates, states, gates.new_empty(0) if att is None else att, injected, weight_hh)
        return grad_gh, grad_gi_n, None if att is None else grad_att, grad_h0
    steps, batch, _ = injected.shape
    hidden = weight_hh.shape[1]
    r, z, n, hn = gates.view(steps, batch, 4, hidden).unbind(2)
    diff = n - states[:-1]
    a = None if att is None else att.unsqueeze(2)
    update = 1 - z if a is None else a * (1 - z)
    d_n = update * (1 - n * n)  # d(pre-activation of n) / dh_t
    # Every gate gradient is linear in dh_t: dG_h = dh_t * coef (gate order r, z, n).
    coef = gates.new_empty(steps, batch, 3, hidden)
    torch.mul(d_n * hn, r * (1 - r), out=coef[:, :, 0])
    torch.mul(diff if a is None else a * diff, z * (z - 1), out=coef[:, :, 1])
    torch.mul(d_n, r, out=coef[:, :, 2])
    keep = 1 - update

    grad_gh = gates.new_empty(steps, batch, 3, hidden)
    dstate = torch.empty_like(injected)  # total gradient of the state after step t
    per_step = list(zip(dstate.unbind(0), grad_gh.unbind(0), grad_gh.view(steps, batch, 3 * hidden).unbind(0),
                        coef.unbind(0), keep.unbind(0), injected.unbind(0)))
    grad_h0 = injected.new_zeros(batch, hidden)
    if steps:
        dh = dstate[-1].copy_(injected[-1])
    for t in range(steps - 1, -1, -1):
        _, grad_t, grad_flat, coef_t, keep_t, _ = per_step[t]
        torch.mul(dh.unsqueeze(1), coef_t, out=grad_t)
        if t:
            dstate_before, *_, injected_before = per_step[t - 1]
            dh = torch.addmm(torch.addcmul(injected_before, dh, keep_t), grad_flat, weight_hh, out=dstate_before)
        else:
            grad_h0 = torch.addmm(dh * keep_t, grad_flat, weight_hh)
    grad_att = None if a is None else (dstate * diff * (1 - z)).sum(2)
    return grad_gh.view(steps, batch, 3 * hidden), dstate * d_n, grad_att, grad_h0


class ProjectedRecurrence(torch.autograd.Function):
    """``(out [B, T, H], h_last [B, H])`` of the GRU (``att`` None) or the AUGRU from the input projections
    ``gi = x W_ih^T + b_ih`` [B, T, 3H], see module docstring.

    Internally time-major ([T, B, ...]) so that every step reads and writes contiguous [B, ...] blocks; a ``gi``
    that is the transpose of a time-major tensor (what :func:`project` returns) is used without a copy.
    """

    @staticmethod
    def forward(ctx, gi: Tensor, att: Tensor | None, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                h0: Tensor | None) -> tuple[Tensor, Tensor]:
        batch, steps, _ = gi.shape
        hidden = weight_hh.shape[1]
        lengths = lengths.to(gi.device)
        gi_steps = gi.transpose(0, 1).contiguous()
        att_steps = None if att is None else att.t().contiguous()
        h_init = gi.new_zeros(batch, hidden) if h0 is None else h0.contiguous()
        weight_hh = weight_hh.contiguous()
        states, gates = _forward_loop(gi_steps, att_steps, h_init, weight_hh, bias_hh.contiguous())

        valid = torch.arange(steps, device=gi.device).unsqueeze(1) < lengths.unsqueeze(0)  # [T, B]
        out = torch.where(valid.t().unsqueeze(2), states[1:].transpose(0, 1), 0).contiguous()
        h_last = states[lengths, torch.arange(batch, device=gi.device)]
        ctx.set_materialize_grads(False)
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(att_steps, lengths, valid, weight_hh, gates, states)
        return out, h_last

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, grad_h_last: Tensor | None):
        att_steps, lengths, valid, weight_hh, gates, states = ctx.saved_tensors
        steps, batch, hidden = states.shape[0] - 1, states.shape[1], states.shape[2]
        needs = ctx.needs_input_grad
        # The outputs reach each state through out at valid steps and through h_last at the row's last valid
        # step (an empty row's h_last is h0 itself); nothing reaches the steps after a row's length.
        if grad_out is None:
            injected = states.new_zeros(steps, batch, hidden)
        else:
            injected = (grad_out.transpose(0, 1) * valid.unsqueeze(2)).contiguous()
        rows = torch.arange(batch, device=states.device)
        if grad_h_last is not None and steps:
            injected.index_put_(((lengths - 1).clamp(min=0), rows), grad_h_last * (lengths > 0).unsqueeze(1),
                                accumulate=True)
        grad_gh, grad_gi_n, grad_att, grad_h0 = _backward_loop(gates, states, att_steps, injected, weight_hh)

        flat = grad_gh.view(steps * batch, 3 * hidden)
        grad_weight_hh = flat.t() @ states[:-1].reshape(steps * batch, hidden) if needs[3] else None
        grad_bias_hh = flat.sum(0) if needs[4] else None
        grad_gh.view(steps, batch, 3, hidden)[:, :, 2] = grad_gi_n  # now the input projections' gradient
        grad_gi = grad_gh.transpose(0, 1) if needs[0] else None
        grad_att = grad_att.t() if grad_att is not None and needs[1] else None
        if not (ctx.has_h0 and needs[5]):
            grad_h0 = None
        elif grad_h_last is not None:
            grad_h0 = grad_h0 + grad_h_last * (lengths == 0).unsqueeze(1)
        return grad_gi, grad_att, None, grad_weight_hh, grad_bias_hh, grad_h0


def project(x: Tensor, weight_ih: Tensor, bias_ih: Tensor) -> Tensor:
    """The input projections ``x W_ih^T + b_ih`` of all steps, [B, T, 3H], as a view of a time-major tensor:
    one matmul, and :class:`ProjectedRecurrence` reads it without a copy."""
    batch, steps, inputs = x.shape
    x_steps = x.transpose(0, 1).reshape(steps * batch, inputs)
    return torch.addmm(bias_ih, x_steps, weight_ih.t()).view(steps, batch, weight_ih.shape[0]).transpose(0, 1)


def gru(x: Tensor, lengths: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
        h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GRU over left-aligned sequences; shapes as :func:`dien.kernels.reference.recurrence`."""
    return ProjectedRecurrence.apply(project(x, weight_ih, bias_ih), None, lengths, weight_hh, bias_hh, h0)


def augru(x: Tensor, att: Tensor, lengths: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
          bias_hh: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """AUGRU (paper Eq. 11-12); ``att`` [B, T]."""
    return ProjectedRecurrence.apply(project(x, weight_ih, bias_ih), att, lengths, weight_hh, bias_hh, h0)


def gru_projected(gi: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                  h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GRU from input projections gi [B, T, 3H] (e.g. from :func:`project`, or computed once and shared)."""
    return ProjectedRecurrence.apply(gi, None, lengths, weight_hh, bias_hh, h0)


def augru_projected(gi: Tensor, att: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                    h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """AUGRU from input projections gi [B, T, 3H]; ``att`` [B, T]."""
    return ProjectedRecurrence.apply(gi, att, lengths, weight_hh, bias_hh, h0)


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
    return ProjectedRecurrence.apply(gathered, att, lengths, weight_hh, bias_hh, h0)[1]


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
