"""CPU backend: the GRU/AUGRU recurrence as one ``torch.autograd.Function`` with a hand-written backward.

Both cells run through one update, ``h' = h + u * (n - h)`` with ``u = a' * (1 - z)``: AUGRU uses
``a' = att * valid``, the GRU ``a' = valid`` (``h + (1 - z)(n - h)`` is ``(1 - z) n + z h``). A padded step has
``u = 0`` and so keeps the state exactly, and ``h_last`` is simply the state after the last step.

Forward: the input projections of all steps are one matmul before the loop; each step is one ``addmm`` for the
three recurrent gates and six in-place/``out=`` elementwise ops that write the gates straight into the buffers the
backward reads, so saving them costs nothing.
Backward: every step's gate derivatives are linear in ``dh_t``, ``dG_t = dh_t * C_t`` and
``dh_{t-1} = dh_t * (1 - u_t) + dG_t @ W_hh``, with coefficients ``C_t`` computed for all steps at once from the
saved gates. The reverse-time loop is then three ops and one ``addmm`` a step, and the weight gradients are one
matmul each over all ``T * B`` rows after the loop.

Measured on the 2-core development machine (torch 2.13 CPU, 2 threads, B=128, T=100, I=H=36, random lengths,
fp32; ``scripts`` of the measurement: ``python -m dien.kernels.bench --quick`` for the two backends):

    option                                            GRU fwd  GRU fwd+bwd  AUGRU fwd+bwd
    reference (per-step projections, autograd)        ~40 ms      ~95 ms       ~110 ms
    loop with hoisted input matmul, autograd          ~19 ms      ~50 ms        ~60 ms
    this autograd.Function                             ~6 ms      ~15 ms        ~16 ms
    torch.compile of the step (inductor C++)          ~22 ms      ~75 ms        ~80 ms
    C++ extension (same algorithm, fused elementwise)  ~4 ms      ~11 ms        ~12 ms
    nn.GRU (oneDNN) on padded input, GRU only          ~5 ms      ~16 ms           n/a

The C++ extension wins by ~1.3x only: at these sizes the ``addmm`` calls dominate, not the Python loop.
It would need a compiler and a ~1 min build on every fresh machine (``make setup``) for that, so this module
stays pure PyTorch. ``torch.compile`` re-enters its guards every step and loses to eager; compiling the whole
unrolled loop took minutes. oneDNN's GRU is as fast for the plain GRU but has no AUGRU, and one code path for
both cells is simpler to keep exact.
"""
from __future__ import annotations

import torch
from torch import Tensor


class Recurrence(torch.autograd.Function):
    """``(out [B, T, H], h_last [B, H])`` of the GRU (``att`` None) or the AUGRU, see module docstring.

    Internally time-major ([T, B, ...]) so that every step reads and writes contiguous [B, ...] blocks:
    strided operands make ``addmm`` copy them, which costs more than the step's arithmetic.
    """

    @staticmethod
    def forward(ctx, x: Tensor, att: Tensor | None, lengths: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                bias_ih: Tensor, bias_hh: Tensor, h0: Tensor | None) -> tuple[Tensor, Tensor]:
        batch, steps, inputs = x.shape
        hidden = weight_hh.shape[1]
        lengths = lengths.to(x.device)
        # tanh(p) = 2 sigmoid(2p) - 1, and sigmoid is ~5x cheaper than tanh on CPU: double the n-gate rows.
        doubled = torch.ones(3 * hidden, 1, dtype=x.dtype, device=x.device)
        doubled[2 * hidden:] = 2
        minus_one = x.new_full((), -1.0)

        x_steps = x.transpose(0, 1).reshape(steps * batch, inputs)
        gi = torch.addmm(bias_ih * doubled[:, 0], x_steps, (weight_ih * doubled).t()).view(steps, batch, 3, hidden)
        gh = x.new_empty(steps, batch, 3, hidden)  # h W_hh^T + b_hh, n chunk doubled
        rz = x.new_empty(steps, batch, 2, hidden)
        n = x.new_empty(steps, batch, hidden)
        states = x.new_empty(steps + 1, batch, hidden)  # states[t] is the state before step t
        states[0] = 0 if h0 is None else h0
        att_steps = None if att is None else att.t().unsqueeze(2).contiguous()  # [T, B, 1]
        weight_hh_t = (weight_hh * doubled).t()
        bias_hh_doubled = bias_hh * doubled[:, 0]
        # Per-step views made once: indexing inside the loop would cost about as much as the step's arithmetic.
        per_step = zip(gi[:, :, :2].unbind(0), gi[:, :, 2].unbind(0), gh.view(steps, batch, 3 * hidden).unbind(0),
                       gh[:, :, :2].unbind(0), gh[:, :, 2].unbind(0), rz.unbind(0), rz[:, :, 0].unbind(0),
                       rz[:, :, 1].unbind(0), n.unbind(0), states[1:].unbind(0),
                       [None] * steps if att is None else att_steps.unbind(0))
        h = states[0]
        # Every row runs all T steps: sequences are left-aligned, so the steps after a row's length change
        # neither its valid outputs nor (gathered below) its last state, and the loop needs no masking.
        for gi_rz, gi_n, gh_t, gh_rz, gh_n, rz_t, r_t, z_t, n_t, state, a_t in per_step:
            torch.addmm(bias_hh_doubled, h, weight_hh_t, out=gh_t)
            torch.add(gi_rz, gh_rz, out=rz_t).sigmoid_()
            torch.addcmul(gi_n, r_t, gh_n, out=n_t).sigmoid_()
            torch.add(minus_one, n_t, alpha=2, out=n_t)
            if a_t is None:
                h = torch.lerp(n_t, h, z_t, out=state)  # (1 - z) n + z h
            else:
                h = torch.lerp(h, n_t, torch.addcmul(a_t, a_t, z_t, value=-1), out=state)  # u = a (1 - z)

        valid = torch.arange(steps, device=x.device).unsqueeze(1) < lengths.unsqueeze(0)  # [T, B]
        out = torch.where(valid.t().unsqueeze(2), states[1:].transpose(0, 1), 0).contiguous()
        h_last = states[lengths, torch.arange(batch, device=x.device)]
        ctx.set_materialize_grads(False)
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(x_steps, att_steps, lengths, valid, weight_ih, weight_hh, gh, rz, n, states)
        return out, h_last

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, grad_h_last: Tensor | None):
        x_steps, att_steps, lengths, valid, weight_ih, weight_hh, gh, rz, n, states = ctx.saved_tensors
        steps, batch, hidden = n.shape
        needs = ctx.needs_input_grad
        h_prev = states[:-1]
        r, z, hn = rz[:, :, 0], rz[:, :, 1], gh[:, :, 2] * 0.5
        diff = n - h_prev
        if att_steps is None:
            update, keep, z_scale = 1 - z, z, -diff
        else:
            update = att_steps * (1 - z)
            keep, z_scale = 1 - update, -att_steps * diff
        dn_pre = update * (1 - n * n)  # d(pre-activation of n) / dh_t = u (1 - n^2)
        coef = torch.empty_like(gh)  # dG_h = dh_t * coef, gate order r, z, n
        torch.mul(dn_pre * hn, r * (1 - r), out=coef[:, :, 0])
        torch.mul(z_scale, z * (1 - z), out=coef[:, :, 1])
        torch.mul(dn_pre, r, out=coef[:, :, 2])

        # What the outputs send to each state: out at valid steps, h_last at the row's last valid step
        # (or straight to h0 for an empty row). Nothing reaches the steps after a row's length.
        injected = n.new_zeros(steps, batch, hidden) if grad_out is None else grad_out.transpose(0, 1) * valid.unsqueeze(2)
        rows = torch.arange(batch, device=n.device)
        if grad_h_last is not None and steps:
            injected.index_put_(((lengths - 1).clamp(min=0), rows), grad_h_last * (lengths > 0).unsqueeze(1),
                                accumulate=True)
        gates = torch.empty_like(gh)
        dstate = torch.empty_like(n)  # total gradient of the state after step t
        dh = dstate[steps - 1].copy_(injected[steps - 1]) if steps else n.new_zeros(batch, hidden)
        per_step = list(zip(dstate.unbind(0), gates.unbind(0), gates.view(steps, batch, 3 * hidden).unbind(0),
                            coef.unbind(0), keep.unbind(0), injected.unbind(0)))
        for t in range(steps - 1, -1, -1):
            _, gates_t, gates_flat, coef_t, keep_t, _ = per_step[t]
            torch.mul(dh.unsqueeze(1), coef_t, out=gates_t)
            if t:
                previous = per_step[t - 1]
                dh = torch.addmm(torch.addcmul(previous[5], dh, keep_t), gates_flat, weight_hh, out=previous[0])
            else:
                dh = torch.addmm(dh * keep_t, gates_flat, weight_hh)

        flat = gates.view(steps * batch, 3 * hidden)
        grad_weight_hh = flat.t() @ h_prev.reshape(steps * batch, hidden) if needs[4] else None
        grad_bias_hh = flat.sum(0) if needs[6] else None
        # The input gates differ from the hidden ones in the n chunk only: dG_i,n = dh u (1 - n^2).
        torch.mul(dstate, dn_pre, out=gates[:, :, 2])
        grad_weight_ih = flat.t() @ x_steps if needs[3] else None
        grad_bias_ih = flat.sum(0) if needs[5] else None
        grad_x = (flat @ weight_ih).view(steps, batch, x_steps.shape[1]).transpose(0, 1) if needs[0] else None
        grad_att = (dstate * diff * (1 - z)).sum(2).t() if att_steps is not None and needs[1] else None
        grad_h0 = None
        if ctx.has_h0 and needs[7]:
            grad_h0 = dh if grad_h_last is None else dh + grad_h_last * (lengths == 0).unsqueeze(1)
        return grad_x, grad_att, None, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, grad_h0


def gru(x: Tensor, lengths: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
        h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """GRU over left-aligned sequences; shapes as :func:`dien.kernels.reference.recurrence`."""
    return Recurrence.apply(x, None, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0)


def augru(x: Tensor, att: Tensor, lengths: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
          bias_hh: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """AUGRU (paper Eq. 11-12); ``att`` [B, T]."""
    return Recurrence.apply(x, att, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0)
