"""Fused GRU/AUGRU recurrences in Triton: the kernels, their host launchers, the autograd Function, the ops.

Forward: the input projections of all steps are one torch matmul (``gi = x W_ih^T + b_ih``, [B, T, 3H], or given
precomputed to ``*_projected``); then one persistent kernel launch runs the whole recurrence. Each program owns ``BLOCK_B`` rows, keeps the three ``W_hh``
gate tiles on chip for all steps, loops over time inside the kernel, fuses the gate math and writes every
``out[b, t]`` (zeros at padded steps) and ``h_last``.

Backward: a reverse-time kernel. The gates are *recomputed*, not saved: with left-aligned sequences the state
before every valid step is already in ``out`` (``h_{t-1} = out[:, t-1]``, ``h0`` at t = 0), so the hidden
projections of all steps are one parallel torch matmul before the kernel, and the kernel recomputes r, z, n
elementwise. The forward kernel therefore writes nothing an inference call does not need, and backward still needs
only one ``tl.dot`` chain per step (``dh_{t-1} = dh_t (1 - u) + dG_t W_hh``). The kernel writes the per-step gate
gradients; the weight gradients are then single matmuls over all ``B * T`` rows (``dW_hh = dG^T H_prev``), so
nothing is reduced with atomics.

Shapes: x [B, T, I]; att [B, T]; lengths [B] int64; weights in ``nn.GRU`` layout; H <= 128, padded inside the
kernels to a power of two >= 16 with masks (so every ``tl.dot`` dimension is >= 16). Computation happens in
``x.dtype`` (float32, or bfloat16 with float32 accumulation and float32 state); fp32 dots run as 3xTF32
(fp32-level accuracy) unless ``torch.backends.cuda.matmul.allow_tf32`` allows plain TF32.

The time loops are ``while`` loops over a runtime ``T``: not specialized on the sequence length, and a ``for``
loop with a runtime bound fails in Triton 3.6's interpreter under numpy >= 2.3. Both kernels compile for sm_90
with Triton 3.6 and 3.9 (checked ahead of time with ``triton.compile`` for ``GPUTarget("cuda", 90, 32)``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_HIDDEN = 128
BLOCK_B = 16


@triton.jit
def _tanh(x):
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def _recurrence_fwd_kernel(
    gi, att, lengths, h0, w_hh, b_hh, out, h_last,
    B, T,
    H: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
    USE_ATT: tl.constexpr, USE_INITIAL_STATE: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    rows = rows.to(tl.int64)
    cols = tl.arange(0, HP)
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]
    length = tl.load(lengths + rows, mask=row_mask, other=0)

    # W_hh^T per gate as [HP in, HP out]: element (k, j) is W_hh[g * H + j, k]. Kept on chip for all steps.
    k = tl.arange(0, HP)[:, None]
    j = tl.arange(0, HP)[None, :]
    w_mask = (k < H) & (j < H)
    w_r = tl.load(w_hh + j * H + k, mask=w_mask, other=0.0)
    w_z = tl.load(w_hh + (H + j) * H + k, mask=w_mask, other=0.0)
    w_n = tl.load(w_hh + (2 * H + j) * H + k, mask=w_mask, other=0.0)
    b_r = tl.load(b_hh + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    b_z = tl.load(b_hh + H + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    b_n = tl.load(b_hh + 2 * H + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]

    if USE_INITIAL_STATE:
        h = tl.load(h0 + rows[:, None] * H + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK_B, HP], dtype=tl.float32)

    t = 0
    while t < T:
        step = rows * T + t
        p_gi = gi + step[:, None] * (3 * H) + cols[None, :]
        i_r = tl.load(p_gi, mask=mask, other=0.0).to(tl.float32)
        i_z = tl.load(p_gi + H, mask=mask, other=0.0).to(tl.float32)
        i_n = tl.load(p_gi + 2 * H, mask=mask, other=0.0).to(tl.float32)
        h_in = h.to(w_r.dtype)
        r = tl.sigmoid(i_r + tl.dot(h_in, w_r, input_precision=DOT_PRECISION) + b_r)
        z = tl.sigmoid(i_z + tl.dot(h_in, w_z, input_precision=DOT_PRECISION) + b_z)
        n = _tanh(i_n + r * (tl.dot(h_in, w_n, input_precision=DOT_PRECISION) + b_n))
        valid = t < length
        if USE_ATT:
            a = tl.where(valid, tl.load(att + step, mask=row_mask, other=0.0).to(tl.float32), 0.0)
        else:
            a = valid.to(tl.float32)
        # GRU: a = 1 gives (1 - z) n + z h; a = 0 (padding) keeps the state exactly.
        h = h + (a[:, None] * (1 - z)) * (n - h)
        o = tl.where(valid[:, None], h, 0.0)
        tl.store(out + step[:, None] * H + cols[None, :], o.to(out.dtype.element_ty), mask=mask)
        t += 1
    tl.store(h_last + rows[:, None] * H + cols[None, :], h.to(h_last.dtype.element_ty), mask=mask)


@triton.jit
def _recurrence_bwd_kernel(
    gi, gh, h_prev, att, lengths, w_hh, grad_out, grad_h_last,
    grad_gi, grad_gh, grad_att, grad_h0,
    B, T,
    H: tl.constexpr, HP: tl.constexpr, BLOCK_B: tl.constexpr,
    USE_ATT: tl.constexpr, HAS_GRAD_OUT: tl.constexpr, HAS_GRAD_H_LAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_mask = rows < B
    rows = rows.to(tl.int64)
    cols = tl.arange(0, HP)
    col_mask = cols < H
    mask = row_mask[:, None] & col_mask[None, :]
    length = tl.load(lengths + rows, mask=row_mask, other=0)

    # W_hh per gate as [HP out, HP in]: element (j, k) is W_hh[g * H + j, k].
    j = tl.arange(0, HP)[:, None]
    k = tl.arange(0, HP)[None, :]
    w_mask = (j < H) & (k < H)
    w_r = tl.load(w_hh + j * H + k, mask=w_mask, other=0.0)
    w_z = tl.load(w_hh + (H + j) * H + k, mask=w_mask, other=0.0)
    w_n = tl.load(w_hh + (2 * H + j) * H + k, mask=w_mask, other=0.0)

    if HAS_GRAD_H_LAST:
        dh = tl.load(grad_h_last + rows[:, None] * H + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    else:
        dh = tl.zeros([BLOCK_B, HP], dtype=tl.float32)

    t = T - 1
    while t >= 0:
        step = rows * T + t
        gate = step[:, None] * (3 * H) + cols[None, :]
        state = step[:, None] * H + cols[None, :]
        gh_n = tl.load(gh + gate + 2 * H, mask=mask, other=0.0)
        r = tl.sigmoid(tl.load(gi + gate, mask=mask, other=0.0).to(tl.float32)
                       + tl.load(gh + gate, mask=mask, other=0.0))
        z = tl.sigmoid(tl.load(gi + gate + H, mask=mask, other=0.0).to(tl.float32)
                       + tl.load(gh + gate + H, mask=mask, other=0.0))
        n = _tanh(tl.load(gi + gate + 2 * H, mask=mask, other=0.0).to(tl.float32) + r * gh_n)
        h = tl.load(h_prev + state, mask=mask, other=0.0).to(tl.float32)
        valid = t < length
        if USE_ATT:
            a = tl.where(valid, tl.load(att + step, mask=row_mask, other=0.0).to(tl.float32), 0.0)
        else:
            a = valid.to(tl.float32)
        if HAS_GRAD_OUT:
            dh += tl.load(grad_out + state, mask=mask & valid[:, None], other=0.0).to(tl.float32)

        update = a[:, None] * (1 - z)
        diff = n - h
        d_n = dh * update * (1 - n * n)  # gradient of n's pre-activation = of gi_n
        d_r = d_n * gh_n * r * (1 - r)
        d_z = -dh * a[:, None] * diff * z * (1 - z)
        d_hn = d_n * r  # gradient of gh_n = W_hn h + b_hn
        tl.store(grad_gi + gate, d_r, mask=mask)
        tl.store(grad_gi + gate + H, d_z, mask=mask)
        tl.store(grad_gi + gate + 2 * H, d_n, mask=mask)
        tl.store(grad_gh + gate, d_r, mask=mask)
        tl.store(grad_gh + gate + H, d_z, mask=mask)
        tl.store(grad_gh + gate + 2 * H, d_hn, mask=mask)
        if USE_ATT:
            d_a = tl.where(valid, tl.sum(dh * diff * (1 - z), axis=1), 0.0)
            tl.store(grad_att + step, d_a, mask=row_mask)

        dh = (dh * (1 - update)
              + tl.dot(d_r.to(w_r.dtype), w_r, input_precision=DOT_PRECISION)
              + tl.dot(d_z.to(w_z.dtype), w_z, input_precision=DOT_PRECISION)
              + tl.dot(d_hn.to(w_n.dtype), w_n, input_precision=DOT_PRECISION))
        t -= 1
    tl.store(grad_h0 + rows[:, None] * H + cols[None, :], dh, mask=mask)


def _padded_hidden(hidden: int) -> int:
    if hidden > MAX_HIDDEN:
        raise ValueError(f"the triton backend supports hidden sizes up to {MAX_HIDDEN}, got {hidden}")
    return max(16, triton.next_power_of_2(hidden))


def _launch_config(dtype: torch.dtype, hidden: int) -> dict:
    """Compile-time settings shared by both kernels."""
    padded = _padded_hidden(hidden)
    # fp32 dots: 3xTF32 (fp32-level accuracy on tensor cores) unless torch allows plain TF32. The IEEE (FMA)
    # path compiles too, but spills kilobytes per thread on sm_90. Other dtypes ignore the setting.
    precision = "tf32" if dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32 else "tf32x3"
    return {
        "H": hidden, "HP": padded, "BLOCK_B": BLOCK_B, "DOT_PRECISION": precision,
        "num_warps": 8 if padded > 64 else 4,
    }


class FusedRecurrence(torch.autograd.Function):
    """``(out [B, T, H], h_last [B, H])`` of the GRU (``att`` None) or the AUGRU from the input projections
    ``gi = x W_ih^T + b_ih`` [B, T, 3H], in ``gi.dtype``."""

    @staticmethod
    def forward(ctx, gi: Tensor, att: Tensor | None, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                h0: Tensor | None) -> tuple[Tensor, Tensor]:
        batch, steps, _ = gi.shape
        hidden = weight_hh.shape[1]
        dtype = gi.dtype
        config = _launch_config(dtype, hidden)
        gi = gi.contiguous()
        lengths = lengths.to(gi.device).contiguous()
        att = None if att is None else att.contiguous()
        h0 = None if h0 is None else h0.contiguous()
        w_hh = weight_hh.to(dtype).contiguous()
        out = torch.empty(batch, steps, hidden, dtype=dtype, device=gi.device)
        h_last = torch.empty(batch, hidden, dtype=dtype, device=gi.device)
        grid = (triton.cdiv(batch, BLOCK_B),)
        if batch:
            _recurrence_fwd_kernel[grid](
                gi, att, lengths, h0, w_hh, bias_hh.contiguous(), out, h_last, batch, steps,
                USE_ATT=att is not None, USE_INITIAL_STATE=h0 is not None, **config,
            )
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(att, lengths, w_hh, bias_hh, h0, gi, out)
        return out, h_last

    @staticmethod
    def backward(ctx, grad_out: Tensor | None, grad_h_last: Tensor | None):
        att, lengths, w_hh, bias_hh, h0, gi, out = ctx.saved_tensors
        batch, steps, hidden = out.shape
        config = _launch_config(gi.dtype, hidden)
        needs = ctx.needs_input_grad
        first = out.new_zeros(batch, 1, hidden) if h0 is None else h0.unsqueeze(1)
        # The state before each step; at padded steps it is out's zero, but there every gate gradient is 0.
        h_prev = torch.cat([first, out], 1)[:, :steps].contiguous()
        flat_prev = h_prev.view(batch * steps, hidden).float()
        gh = torch.addmm(bias_hh.float(), flat_prev, w_hh.float().t())
        grad_gi = torch.empty(batch * steps, 3 * hidden, dtype=torch.float32, device=gi.device)
        grad_gh = torch.empty_like(grad_gi)
        grad_att = None if att is None else torch.empty(batch, steps, dtype=torch.float32, device=gi.device)
        grad_h0 = torch.empty(batch, hidden, dtype=torch.float32, device=gi.device)
        if batch:
            _recurrence_bwd_kernel[(triton.cdiv(batch, BLOCK_B),)](
                gi, gh, h_prev, att, lengths, w_hh,
                None if grad_out is None else grad_out.contiguous(),
                None if grad_h_last is None else grad_h_last.contiguous(),
                grad_gi, grad_gh, grad_att, grad_h0, batch, steps,
                USE_ATT=att is not None, HAS_GRAD_OUT=grad_out is not None,
                HAS_GRAD_H_LAST=grad_h_last is not None, **config,
            )
        # Gradients stay fp32 here; autograd casts each to its input's dtype.
        grad_weight_hh = grad_gh.t() @ flat_prev if needs[3] else None
        grad_bias_hh = grad_gh.sum(0) if needs[4] else None
        grad_gi = grad_gi.view(batch, steps, 3 * hidden) if needs[0] else None
        grad_att = grad_att if needs[1] else None
        grad_h0 = grad_h0 if h0 is not None and needs[5] else None
        return grad_gi, grad_att, None, grad_weight_hh, grad_bias_hh, grad_h0


def project(x: Tensor, weight_ih: Tensor, bias_ih: Tensor) -> Tensor:
    """The input projections ``x W_ih^T + b_ih`` of all steps, [B, T, 3H], in ``x.dtype`` (one matmul)."""
    batch, steps, inputs = x.shape
    gi = torch.addmm(bias_ih.to(x.dtype), x.reshape(batch * steps, inputs), weight_ih.to(x.dtype).t())
    return gi.view(batch, steps, weight_ih.shape[0])


def gru(x: Tensor, lengths: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor, bias_hh: Tensor,
        h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fused GRU: x [B, T, I] float32/bfloat16, lengths [B] int64, ``nn.GRU`` weights, h0 [B, H] or None.

    Returns out [B, T, H] (zeros at padded steps) and h_last [B, H], both in ``x.dtype``.
    """
    return FusedRecurrence.apply(project(x, weight_ih, bias_ih), None, lengths, weight_hh, bias_hh, h0)


def augru(x: Tensor, att: Tensor, lengths: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
          bias_hh: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fused AUGRU (paper Eq. 11-12): like :func:`gru` with att [B, T] scaling the update gate."""
    return FusedRecurrence.apply(project(x, weight_ih, bias_ih), att, lengths, weight_hh, bias_hh, h0)


def gru_projected(gi: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                  h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fused GRU from input projections gi [B, T, 3H]."""
    return FusedRecurrence.apply(gi, None, lengths, weight_hh, bias_hh, h0)


def augru_projected(gi: Tensor, att: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
                    h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Fused AUGRU from input projections gi [B, T, 3H]; att [B, T]."""
    return FusedRecurrence.apply(gi, att, lengths, weight_hh, bias_hh, h0)


def augru_last(gi: Tensor, att: Tensor, lengths: Tensor, weight_hh: Tensor, bias_hh: Tensor,
               h0: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """Fused AUGRU final states [B, H] from input projections gi [R, T, 3H], row b reading gi[rows[b]]."""
    gathered = gi if rows is None else gi.index_select(0, rows)
    return FusedRecurrence.apply(gathered, att, lengths, weight_hh, bias_hh, h0)[1]
