"""The CPU backend against the reference: outputs, final state and every input's gradient; and the dispatch.

Tests taking the ``loops`` fixture run twice: on the C++ time loops (skipped where ``make setup`` did not build
them) and on the PyTorch loops the backend falls back to. float64 always runs the PyTorch loops.
"""
import os

import pytest
import torch

from dien import kernels
from dien.kernels import cpu
from dien.bench.kernel_cases import ALL_OPS, forward_backward, make_inputs, run


@pytest.fixture(params=["extension", "pytorch"])
def loops(request, monkeypatch):
    if request.param == "extension" and cpu._extension() is None:
        pytest.skip("the C++ loops are not built (make setup)")
    if request.param == "pytorch":
        monkeypatch.setattr(cpu, "_extension", lambda: None)
    return request.param


def assert_same_results(actual: dict, expected: dict, **tolerances) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], msg=lambda m: f"{name}: {m}", **tolerances)


@pytest.mark.parametrize("op", ["gru", "augru"])
def test_full_size_matches_reference(op, loops):
    """The paper's sizes: batch 128, 100 steps, input 36, hidden 36; lengths from 0 to 100, with h0."""
    case = make_inputs(128, 100, 36, 36, with_h0=True, seed=1)
    expected = forward_backward(op, case, "reference")
    actual = forward_backward(op, case, "cpu")
    # fp32 sums over 12,800 (row, step) pairs in another order: weight gradients differ in the last bits.
    assert_same_results(actual, expected, rtol=1e-4, atol=1e-4)


ODD_SIZES = [(5, 63, 7, 13), (1, 1, 3, 2), (33, 17, 36, 108)]


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("batch, steps, inputs, hidden", ODD_SIZES)
def test_odd_sizes_match_reference_in_float64(op, with_h0, batch, steps, inputs, hidden):
    case = make_inputs(batch, steps, inputs, hidden, with_h0=with_h0, dtype=torch.float64, seed=2)
    assert_same_results(forward_backward(op, case, "cpu"), forward_backward(op, case, "reference"))


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("batch, steps, inputs, hidden", ODD_SIZES)
def test_odd_sizes_match_reference_in_float32(op, with_h0, batch, steps, inputs, hidden, loops):
    case = make_inputs(batch, steps, inputs, hidden, with_h0=with_h0, seed=2)
    assert_same_results(forward_backward(op, case, "cpu"), forward_backward(op, case, "reference"),
                        rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["gru", "augru"])
def test_zero_steps_return_the_initial_state(op, loops):
    case = make_inputs(4, 0, 3, 5, with_h0=True)
    assert_same_results(forward_backward(op, case, "cpu"), forward_backward(op, case, "reference"))


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("used", ["out", "h_last"])
def test_gradients_when_only_one_output_is_used(op, used, loops):
    """The backward receives None for the unused output (materialize_grads is off)."""
    case = make_inputs(6, 9, 4, 5, with_h0=True, seed=3)
    grads = {}
    for backend in ("reference", "cpu"):
        for tensor in case.leaves().values():
            tensor.grad = None
        out, h_last = run(op, case, backend)
        (out if used == "out" else h_last).sum().backward()
        grads[backend] = {name: tensor.grad for name, tensor in case.leaves().items() if tensor.grad is not None}
    assert_same_results(grads["cpu"], grads["reference"], rtol=1e-4, atol=1e-5)


def test_gradcheck():
    case = make_inputs(3, 5, 2, 3, with_h0=True, dtype=torch.float64, seed=4)
    gi = torch.randn(3, 5, 9, dtype=torch.float64, requires_grad=True)
    args = (gi, case.att, case.lengths, case.weight_hh, case.bias_hh, case.h0)
    assert torch.autograd.gradcheck(cpu.augru_projected, args)
    assert torch.autograd.gradcheck(cpu.gru_projected, (gi,) + args[2:])
    # A time-major gi (what cpu.project returns) is packed from its own layout.
    time_major = gi.detach().transpose(0, 1).contiguous().requires_grad_()
    assert torch.autograd.gradcheck(cpu.augru_projected, (time_major.transpose(0, 1),) + args[1:])


def test_default_backend_follows_the_device(monkeypatch):
    monkeypatch.delenv("DIEN_KERNEL", raising=False)
    assert kernels.resolve_backend("cpu") == "cpu"
    triton_imports = kernels.dispatch._triton_backend() is not None
    assert kernels.resolve_backend("cuda") == ("triton" if triton_imports else "cpu")
    assert {"reference", "cpu"} <= set(kernels.available_backends())


def test_environment_overrides_the_backend(monkeypatch):
    monkeypatch.setenv("DIEN_KERNEL", "reference")
    assert kernels.resolve_backend("cpu", "cpu") == "reference"
    monkeypatch.setenv("DIEN_KERNEL", "fastest-please")
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.resolve_backend("cpu")


def test_triton_backend_refuses_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.delenv("DIEN_KERNEL", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="triton"):
        kernels.resolve_backend("cpu", "triton")


def recorded_dtypes(monkeypatch, module, function: str) -> list[dict[str, torch.dtype]]:
    """Wrap ``module.function`` (a backend's gru or augru) to record the dtypes it is called with."""
    calls, original = [], getattr(module, function)

    def recording(x, *args):
        calls.append({"x": x.dtype, "weights": {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}})
        return original(x, *args)

    monkeypatch.setattr(module, function, recording)
    return calls


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_under_bf16_autocast_the_fp32_backends_compute_in_fp32(backend, monkeypatch):
    from dien.kernels import reference
    calls = recorded_dtypes(monkeypatch, cpu if backend == "cpu" else reference, "augru")
    case = make_inputs(4, 7, 5, 6)
    x = case.x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        projected = torch.nn.functional.linear(x, torch.eye(5))  # bf16 under autocast, as the model's layers
        out, h_last = kernels.augru(projected, case.att, case.lengths, case.weight_ih, case.weight_hh,
                                    case.bias_ih, case.bias_hh, backend=backend)
    assert projected.dtype == torch.bfloat16
    assert calls == [{"x": torch.float32, "weights": {torch.float32}}]
    assert out.dtype == h_last.dtype == torch.float32
    out.sum().backward()
    assert x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0


def test_compute_dtype_follows_the_backend_and_autocast():
    from dien.kernels.dispatch import compute_dtype
    assert compute_dtype("triton", "cpu", torch.float32) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert compute_dtype("triton", "cpu", torch.float32) == torch.bfloat16
        assert compute_dtype("cpu", "cpu", torch.bfloat16) == torch.float32
    with torch.autocast("cpu", dtype=torch.float16):
        assert compute_dtype("triton", "cpu", torch.float16) == torch.float32


def test_the_extension_build_is_named_by_the_cpu_it_was_compiled_for(monkeypatch):
    signature = cpu.cpu_signature()
    assert signature.split()[0] == os.uname().machine
    name = cpu.extension_name()
    assert cpu.extension_name() == name
    monkeypatch.setattr(cpu, "cpu_signature", lambda: f"{signature} an_extension_this_cpu_lacks")
    assert cpu.extension_name() != name


def test_a_build_for_another_cpu_is_not_loaded(monkeypatch):
    """A venv moved to a CPU without the instructions -march=native used falls back to the PyTorch loops."""
    monkeypatch.setattr(cpu, "cpu_signature", lambda: "another-machine")
    cpu._extension.cache_clear()
    try:
        assert cpu._extension() is None
        case = make_inputs(3, 5, 4, 6)
        expected = forward_backward("augru", case, "reference")
        assert_same_results(forward_backward("augru", case, "cpu"), expected, rtol=1e-5, atol=1e-5)
    finally:
        monkeypatch.undo()
        cpu._extension.cache_clear()


@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("candidates", [300, 7])
def test_augru_last_reads_shared_projections_through_rows(with_h0, grad, candidates, loops):
    """Candidates that share a request's history read its projections in place: the same final states (and,
    with gradients, the same gradients) as gathering them first, on the reference. Without gradients the C++
    loops run their inference path (rows by length, in blocks): 300 rows take more than one block and a GEMM a
    step, 7 rows (an odd number) the few-row loop."""
    case = make_inputs(9, 11, 6, 13, seed=7)
    gi = kernels.project(case.x, case.weight_ih, case.bias_ih, backend="reference").detach().requires_grad_(grad)
    generator = torch.Generator().manual_seed(8)
    rows = torch.randint(0, 9, (candidates,), generator=generator)
    att = torch.rand(candidates, 11, generator=generator)
    lengths = torch.randint(0, 12, (candidates,), generator=generator)
    h0 = torch.randn(candidates, 13, generator=generator) if with_h0 else None
    weights = (case.weight_hh.detach().requires_grad_(grad), case.bias_hh.detach().requires_grad_(grad))
    results = {}
    for backend in ("reference", "cpu"):
        with torch.set_grad_enabled(grad):
            h_last = kernels.augru_last(gi, att, lengths, *weights, h0=h0, rows=rows, backend=backend)
        results[backend] = [h_last.detach()]
        if grad:
            results[backend] += torch.autograd.grad(h_last.pow(2).sum(), (gi, *weights))
    for actual, expected in zip(results["cpu"], results["reference"]):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="rows must index"):
        kernels.augru_last(gi, att, lengths, *weights, rows=rows + 9)
