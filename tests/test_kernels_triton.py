"""The Triton kernels against the reference, run by Triton's interpreter on CPU tensors (fp32, small shapes).

``@triton.jit`` reads ``TRITON_INTERPRET`` when a kernel is *defined*, i.e. when ``dien.kernels.triton_recurrence``
is imported; ``dien.kernels`` imports it only on first use of the triton backend. So this module sets the
variable before importing anything from ``dien``, and if something earlier in the session already imported the
kernels compiled-for-GPU, it defines them again (``importlib.reload``) so that they are interpreted. The variable
stays set for the session: it only matters to Triton kernels, and every other test runs on CPU tensors.
bf16 is not tested here: the interpreter's bf16 arithmetic is wrong.
"""
import importlib
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from dien import kernels  # noqa: E402
from dien.kernels import triton_recurrence  # noqa: E402
from dien.kernels.cases import forward_backward, make_inputs, run  # noqa: E402

if not isinstance(triton_recurrence._recurrence_fwd_kernel, InterpretedFunction):
    importlib.reload(triton_recurrence)


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


@pytest.mark.parametrize("op", ["gru", "augru"])
@pytest.mark.parametrize("hidden", [16, 36])
@pytest.mark.parametrize("with_h0", [False, True])
def test_matches_reference(op, hidden, with_h0, poisoned_buffers):
    """19 rows (two programs of 16, the second mostly masked), 13 steps, lengths from 0 to 13."""
    case = make_inputs(19, 13, 7, hidden, with_h0=with_h0, seed=hidden + with_h0)
    expected = forward_backward(op, case, "reference")
    assert_same_results(forward_backward(op, case, "triton"), expected)


@pytest.mark.parametrize("op", ["gru", "augru"])
@pytest.mark.parametrize("used", ["out", "h_last"])
def test_gradients_when_only_one_output_is_used(op, used, poisoned_buffers):
    """The kernels' HAS_GRAD_OUT / HAS_GRAD_H_LAST paths."""
    case = make_inputs(5, 6, 3, 16, with_h0=True, seed=5)
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
    case = make_inputs(3, 0, 4, 16, with_h0=True)
    assert_same_results(forward_backward(op, case, "triton"), forward_backward(op, case, "reference"))


def test_dispatch_runs_triton_under_the_interpreter(monkeypatch):
    monkeypatch.delenv("DIEN_KERNEL", raising=False)
    assert "triton" in kernels.available_backends()
    assert kernels.resolve_backend("cuda") == "triton"
    monkeypatch.setenv("DIEN_KERNEL", "triton")
    case = make_inputs(2, 3, 4, 16)
    out, _ = run("gru", case, None)
    torch.testing.assert_close(out, run("gru", case, "reference")[0], rtol=1e-4, atol=1e-5)


def test_hidden_sizes_above_128_are_refused():
    case = make_inputs(2, 3, 4, 129)
    with pytest.raises(ValueError, match="up to 128"):
        run("gru", case, "triton")
