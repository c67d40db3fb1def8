"""The Triton kernels against the reference: compiled on a GPU when one is visible, else run by Triton's
interpreter on CPU tensors (fp32, small shapes).

``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is *defined*, i.e. when ``dien.kernels.triton_recurrence``
is imported; ``dien.kernels`` imports it only on first use of the triton backend. So without a GPU this module sets
the variable before importing anything from ``dien``, and if something earlier in the session already imported the
kernels compiled-for-GPU, it defines them again (``importlib.reload``) so that they are interpreted. The variable
stays set for the session: it only matters to Triton kernels, and every other test runs on CPU tensors.
bf16 and the benchmark's shapes are tested on a GPU only: the interpreter's bf16 arithmetic is wrong, and it is
too slow for long sequences. On a GPU machine without Ray: ``make gpu-check``.
"""
import importlib
import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from dien import kernels  # noqa: E402
from dien.kernels import triton_recurrence  # noqa: E402
from dien.bench.kernel_cases import ALL_OPS, forward_backward, make_inputs, run  # noqa: E402

if DEVICE == "cpu" and not isinstance(triton_recurrence._recurrence_fwd_kernel, InterpretedFunction):
    importlib.reload(triton_recurrence)

on_gpu_only = pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")


@pytest.fixture
def poisoned_buffers(monkeypatch):
    """Every buffer the backend allocates starts as NaN, so an element a kernel fails to write shows up."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(tensor):
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    monkeypatch.setattr(torch, "empty", lambda *args, **kwargs: poison(empty(*args, **kwargs)))
    monkeypatch.setattr(torch, "empty_like", lambda *args, **kwargs: poison(empty_like(*args, **kwargs)))


def assert_same_results(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("hidden", [16, 36])
@pytest.mark.parametrize("with_h0", [False, True])
def test_matches_reference(op, hidden, with_h0, poisoned_buffers):
    """19 rows (two programs of 16, the second mostly masked), 13 steps, lengths from 0 to 13."""
    case = make_inputs(19, 13, 7, hidden, with_h0=with_h0, seed=hidden + with_h0, device=DEVICE)
    expected = forward_backward(op, case, "reference")
    assert_same_results(forward_backward(op, case, "triton"), expected)


@pytest.mark.parametrize("op", ["gru", "augru"])
@pytest.mark.parametrize("used", ["out", "h_last"])
def test_gradients_when_only_one_output_is_used(op, used, poisoned_buffers):
    """The kernels' HAS_GRAD_OUT / HAS_GRAD_H_LAST paths."""
    case = make_inputs(5, 6, 3, 16, with_h0=True, seed=5, device=DEVICE)
    grads = {}
    for backend in ("reference", "triton"):
        for tensor in case.leaves().values():
            tensor.grad = None
        out, h_last = run(op, case, backend)
        (out if used == "out" else h_last).sum().backward()
        grads[backend] = {name: tensor.grad for name, tensor in case.leaves().items() if tensor.grad is not None}
    assert_same_results(grads["triton"], grads["reference"])


@pytest.mark.parametrize("op", ["gru", "augru"])
def test_zero_steps_return_the_initial_state(op, poisoned_buffers):
    case = make_inputs(3, 0, 4, 16, with_h0=True, device=DEVICE)
    assert_same_results(forward_backward(op, case, "triton"), forward_backward(op, case, "reference"))


def test_augru_last_reads_shared_projections_through_rows(poisoned_buffers):
    """Final states and gradients of candidates reading their request's projections through ``rows``."""
    case = make_inputs(5, 7, 4, 16, seed=9, device=DEVICE)
    gi = kernels.project(case.x, case.weight_ih, case.bias_ih, backend="reference").detach().requires_grad_()
    rows = torch.tensor([0, 0, 3, 1, 4, 4, 2, 0, 3], device=DEVICE)
    att = torch.rand(9, 7, device=DEVICE)
    lengths = torch.tensor([7, 0, 3, 5, 1, 7, 6, 2, 4], device=DEVICE)
    results = {}
    for backend in ("reference", "triton"):
        h_last = kernels.augru_last(gi, att, lengths, case.weight_hh, case.bias_hh, rows=rows, backend=backend)
        results[backend] = [h_last.detach(), *torch.autograd.grad(h_last.pow(2).sum(), (gi, case.weight_hh))]
    for actual, expected in zip(results["triton"], results["reference"]):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_dispatch_runs_triton(monkeypatch):
    monkeypatch.delenv("DIEN_KERNEL", raising=False)
    assert "triton" in kernels.available_backends()
    assert kernels.resolve_backend("cuda") == "triton"
    monkeypatch.setenv("DIEN_KERNEL", "triton")
    case = make_inputs(2, 3, 4, 16, device=DEVICE)
    out, _ = run("gru", case, None)
    torch.testing.assert_close(out, run("gru", case, "reference")[0], rtol=1e-4, atol=1e-5)


def test_hidden_sizes_above_128_are_refused():
    case = make_inputs(2, 3, 4, 129, device=DEVICE)
    with pytest.raises(ValueError, match="up to 128"):
        run("gru", case, "triton")


def assert_close_in_norm(actual: dict, expected: dict, tolerance: float) -> None:
    """Every tensor finite and within ``tolerance`` of the reference's in ||actual - expected|| / ||expected||."""
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        result, value = actual[name].double(), value.double()
        assert torch.isfinite(result).all(), name
        assert (result - value).norm() / value.norm().clamp_min(1e-30) < tolerance, name


@on_gpu_only
@pytest.mark.parametrize("op", ["gru", "augru"])
@pytest.mark.parametrize("hidden", [32, 108])
def test_benchmark_shapes_match_reference(op, hidden, poisoned_buffers):
    """Many programs (300 rows), the paper's 100 steps, the student's and the teacher's hidden sizes.

    Compared in relative norm: the weight gradients sum 30,000 rows, so their elements near zero carry the
    summation-order error of the largest terms, which no elementwise relative tolerance fits."""
    case = make_inputs(300, 100, 36, hidden, with_h0=True, seed=hidden, device=DEVICE)
    assert_close_in_norm(forward_backward(op, case, "triton"), forward_backward(op, case, "reference"), 1e-5)


@on_gpu_only
@pytest.mark.parametrize("op", ["gru", "augru"])
@pytest.mark.parametrize("hidden", [36, 108])
def test_bfloat16_stays_near_the_float32_reference(op, hidden, poisoned_buffers):
    """bf16 operands, fp32 accumulation and state: every output and gradient within 2e-2 in relative norm."""
    expected = forward_backward(op, make_inputs(64, 50, 36, hidden, seed=7, device=DEVICE), "reference")
    actual = forward_backward(op, make_inputs(64, 50, 36, hidden, seed=7, dtype=torch.bfloat16, device=DEVICE),
                              "triton")
    assert all(value.dtype == torch.bfloat16 for value in actual.values())
    assert_close_in_norm(actual, expected, 2e-2)


def test_under_bf16_autocast_the_fused_kernels_get_bf16_inputs(monkeypatch):
    """The bf16 path the kernel benchmark measures: x, att, weights and h0 all bf16 (fp32 accumulation inside)."""
    received = []
    original = triton_recurrence.FusedRecurrence.forward

    def recording(ctx, x, att, lengths, *weights_and_h0):
        received.append({t.dtype for t in (x, att, *weights_and_h0) if t is not None})
        return original(ctx, x, att, lengths, *weights_and_h0)

    monkeypatch.setattr(triton_recurrence.FusedRecurrence, "forward", staticmethod(recording))
    case = make_inputs(3, 5, 16, 16, with_h0=True, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out, _ = kernels.augru(case.x, case.att, case.lengths, case.weight_ih, case.weight_hh, case.bias_ih,
                               case.bias_hh, case.h0, backend="triton")
    assert received == [{torch.bfloat16}] and out.dtype == torch.bfloat16
