"""Benchmarks of the recurrence backends and of DIEN training end to end (what ``jobs/bench_kernels.py`` runs).

Kernels: forward (inference, ``no_grad``) and forward + backward time of ``gru`` and ``augru`` per backend, with
every row at full length so the work is exactly known. Backends are timed in interleaved rounds and the best
round is kept, so the ratios hold on a machine shared with other work. GFLOP/s count the matmul work only:
6·H·(I + H) per row and step forward, three times that forward + backward. ``nn.GRU`` (cuDNN on CUDA, ATen/oneDNN
on the CPU) runs on the padded input as the bar for the GRU; it has no AUGRU. Each result also carries the
largest error of the outputs and input gradients against the fp32 reference, relative to each tensor's largest
magnitude, so a GPU run checks correctness in the same call.

Training: samples/s of ``train_step`` on the DIEN model (GRU extractor + AUGRU evolution + auxiliary loss) with
random batches, once per backend selected through ``DIEN_KERNEL``.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from dien.bench.kernel_cases import OPS, RecurrenceInputs, forward_backward, make_inputs, run
from dien.data.batch import Batch
from dien.kernels import dispatch
from dien.model import ModelConfig, build_model
from dien.train.loop import TrainConfig, make_optimizer, train_step

logger = logging.getLogger(__name__)

TORCH_GRU = "nn.GRU"
"""The baseline backend name: PyTorch's own GRU on the padded input."""


@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (128, 1024)
    """Batch sizes of the kernel benchmark."""
    hiddens: tuple[int, ...] = (32, 36, 108)
    """Hidden sizes (student 32, paper 36, teacher 108)."""
    steps: int = 100
    """Sequence length (the paper keeps the last 100 behaviors)."""
    inputs: int = 36
    """Input width (item + category embeddings)."""
    dtypes: tuple[str, ...] = ("float32", "bfloat16")
    """Dtypes on CUDA; the CPU runs float32 only."""
    rounds: int = 5
    """Timed rounds per measurement; the best is kept."""
    warmup: int = 1
    """Untimed rounds first (Triton compiles then)."""
    train_batch: int = 128
    """Samples per training step."""
    train_steps: int = 10
    """Timed training steps per backend (after 2 untimed ones)."""
    train_hidden: int = 36
    """Hidden size of the trained DIEN model."""

    @classmethod
    def quick(cls) -> "BenchConfig":
        """A short run: batch 128, hidden 36, few rounds."""
        return cls(batches=(128,), hiddens=(36,), rounds=3, train_steps=3)


@dataclass
class KernelResult:
    op: str
    backend: str
    device: str
    dtype: str
    batch: int
    steps: int
    inputs: int
    hidden: int
    forward_ms: float | None = None
    forward_backward_ms: float | None = None
    forward_samples_per_s: float | None = None
    forward_backward_samples_per_s: float | None = None
    forward_gflops: float | None = None
    forward_backward_gflops: float | None = None
    max_rel_error: float | None = None
    """Largest |backend - fp32 reference| / max |reference| over out, h_last and the input gradients."""
    error: str | None = None
    """Why the backend could not run this case."""


@dataclass
class TrainResult:
    backend: str
    device: str
    batch: int
    steps: int
    hidden: int
    samples_per_s: float | None = None
    error: str | None = None


@dataclass
class BenchReport:
    device: str
    versions: dict[str, str | None]
    threads: int
    config: BenchConfig
    kernels: list[KernelResult] = field(default_factory=list)
    training: list[TrainResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def kernel_backends(device: torch.device) -> list[str]:
    """The recurrence backends runnable on ``device``, then the ``nn.GRU`` baseline."""
    available = dispatch.available_backends()
    names = [name for name in ("reference", "cpu", "triton") if name in available]
    if device.type != "cuda":
        names = [name for name in names if name != "triton"]
    return names + [TORCH_GRU]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _synchronize(device)
    started = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - started


def _torch_gru_pass(case: RecurrenceInputs) -> Callable[[], tuple[Tensor, Tensor]]:
    """``nn.GRU`` with the case's weights on the padded input (lengths are ignored: the benchmark uses full ones)."""
    module = nn.GRU(case.x.shape[2], case.weight_hh.shape[1], batch_first=True)
    module.to(case.x.device, case.x.dtype)
    with torch.no_grad():
        for name, value in (("weight_ih_l0", case.weight_ih), ("weight_hh_l0", case.weight_hh),
                            ("bias_ih_l0", case.bias_ih), ("bias_hh_l0", case.bias_hh)):
            getattr(module, name).copy_(value)

    def forward() -> tuple[Tensor, Tensor]:
        out, h_n = module(case.x, None if case.h0 is None else case.h0.unsqueeze(0))
        return out, h_n[0]

    return forward


def _passes(op: str, backend: str, case: RecurrenceInputs) -> tuple[Callable[[], object], Callable[[], object]]:
    """(forward without gradients, forward + backward) of one backend."""
    forward = _torch_gru_pass(case) if backend == TORCH_GRU else (lambda: run(op, case, backend))

    def inference() -> object:
        with torch.no_grad():
            return forward()

    def training() -> None:
        out, h_last = forward()
        torch.autograd.backward([out, h_last], [case.grad_out, case.grad_h_last])

    return inference, training


def _torch_gru_results(case: RecurrenceInputs) -> dict[str, Tensor]:
    """``nn.GRU``'s outputs and gradients, named like :func:`forward_backward`'s (no ``att``: it is not an input)."""
    forward = _torch_gru_pass(case)
    case.x.grad = None
    out, h_last = forward()
    torch.autograd.backward([out, h_last], [case.grad_out, case.grad_h_last])
    return {"out": out.detach(), "h_last": h_last.detach(), "grad_x": case.x.grad}


def _max_rel_error(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> float:
    worst = 0.0
    for name, value in actual.items():
        target = expected[name].float()
        scale = target.abs().max().item() if target.numel() else 0.0
        if scale > 0:
            worst = max(worst, (value.float() - target).abs().max().item() / scale)
    return worst


def bench_kernels(config: BenchConfig, device: torch.device) -> Iterator[KernelResult]:
    dtypes = config.dtypes if device.type == "cuda" else ("float32",)
    backends = kernel_backends(device)
    for op in OPS:
        for dtype_name in dtypes:
            for batch in config.batches:
                for hidden in config.hiddens:
                    yield from _bench_case(op, backends, getattr(torch, dtype_name), batch, hidden, config, device)


def _bench_case(op: str, backends: list[str], dtype: torch.dtype, batch: int, hidden: int, config: BenchConfig,
                device: torch.device) -> Iterator[KernelResult]:
    shape = (batch, config.steps, config.inputs, hidden)
    case = make_inputs(*shape, full_lengths=True, dtype=dtype, device=device)
    backends = [name for name in backends if not (name == TORCH_GRU and op != "gru")]
    results = {name: KernelResult(op, name, str(device), str(dtype).removeprefix("torch."), *shape)
               for name in backends}
    passes = {}
    for name in backends:
        try:
            passes[name] = _passes(op, name, case)
            for _ in range(config.warmup):
                for timed_pass in passes[name]:
                    _timed(timed_pass, device)
        except (RuntimeError, ValueError) as error:
            logger.warning("%s %s failed: %s", op, name, error)
            results[name].error = f"{type(error).__name__}: {error}"[:300]
            passes.pop(name, None)
    best = {name: [float("inf"), float("inf")] for name in passes}
    for _ in range(config.rounds):
        for name, (inference, training) in passes.items():
            best[name][0] = min(best[name][0], _timed(inference, device))
            best[name][1] = min(best[name][1], _timed(training, device))

    flops = 6 * hidden * (config.inputs + hidden) * batch * config.steps
    expected = forward_backward(op, make_inputs(*shape, full_lengths=True, device=device), "reference")
    for name, (forward_s, training_s) in best.items():
        result = results[name]
        result.forward_ms, result.forward_backward_ms = forward_s * 1e3, training_s * 1e3
        result.forward_samples_per_s, result.forward_backward_samples_per_s = batch / forward_s, batch / training_s
        result.forward_gflops, result.forward_backward_gflops = flops / forward_s / 1e9, 3 * flops / training_s / 1e9
        actual = _torch_gru_results(case) if name == TORCH_GRU else forward_backward(op, case, name)
        result.max_rel_error = _max_rel_error(actual, expected)
    yield from results.values()


def random_batch(batch: int, steps: int, n_items: int, n_cats: int, generator: torch.Generator) -> Batch:
    """Random samples: lengths uniform in [1, T], ids >= 2 at valid steps and 0 (padding) after."""
    lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
    valid = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)

    def ids(vocab: int, *size: int) -> Tensor:
        return torch.randint(2, vocab, size, generator=generator)

    return Batch(
        user=torch.arange(batch),
        hist_item=ids(n_items, batch, steps) * valid,
        hist_cat=ids(n_cats, batch, steps) * valid,
        neg_hist_item=ids(n_items, batch, steps) * valid,
        neg_hist_cat=ids(n_cats, batch, steps) * valid,
        lengths=lengths,
        target_item=ids(n_items, batch),
        target_cat=ids(n_cats, batch),
        label=torch.randint(0, 2, (batch,), generator=generator).float(),
    )


@contextlib.contextmanager
def _kernel_backend(name: str) -> Iterator[None]:
    """Every recurrence in the block runs on backend ``name`` (through ``DIEN_KERNEL``)."""
    previous = os.environ.get("DIEN_KERNEL")
    os.environ["DIEN_KERNEL"] = name
    try:
        yield
    finally:
        if previous is None:
            del os.environ["DIEN_KERNEL"]
        else:
            os.environ["DIEN_KERNEL"] = previous


def bench_training(config: BenchConfig, device: torch.device) -> Iterator[TrainResult]:
    n_items, n_cats = 10_000, 100
    generator = torch.Generator().manual_seed(0)
    batches = [random_batch(config.train_batch, config.steps, n_items, n_cats, generator).to(device)
               for _ in range(4)]
    train_config = TrainConfig(batch_size=config.train_batch)
    for name in [backend for backend in kernel_backends(device) if backend != TORCH_GRU]:
        result = TrainResult(name, str(device), config.train_batch, config.steps, config.train_hidden)
        torch.manual_seed(0)
        model = build_model("dien", ModelConfig(n_items=n_items, n_cats=n_cats, hidden=config.train_hidden))
        model.to(device)
        optimizer, _ = make_optimizer(model, train_config)
        try:
            with _kernel_backend(name):
                for step in range(2):
                    train_step(model, batches[step % len(batches)], optimizer, train_config)
                _synchronize(device)
                started = time.perf_counter()
                for step in range(config.train_steps):
                    train_step(model, batches[step % len(batches)], optimizer, train_config)
                _synchronize(device)
                elapsed = time.perf_counter() - started
            result.samples_per_s = config.train_steps * config.train_batch / elapsed
        except (RuntimeError, ValueError) as error:
            logger.warning("training with %s failed: %s", name, error)
            result.error = f"{type(error).__name__}: {error}"[:300]
        yield result


def _installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_benchmark(config: BenchConfig, device: torch.device, train: bool = True) -> BenchReport:
    report = BenchReport(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        versions={"torch": torch.__version__, "triton": _installed_version("triton")},
        threads=torch.get_num_threads(),
        config=config,
    )
    for result in bench_kernels(config, device):
        logger.info("%s", result)
        report.kernels.append(result)
    if train:
        for result in bench_training(config, device):
            logger.info("%s", result)
            report.training.append(result)
    return report


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_report(report: BenchReport) -> str:
    """The report as plain-text tables, with each backend's speed-up over the reference."""
    lines = [f"device: {report.device}, threads: {report.threads}, versions: {report.versions}", ""]
    header = (f"{'op':6} {'dtype':8} {'batch':>5} {'H':>4} {'backend':10} {'fwd ms':>9} {'f+b ms':>9} "
              f"{'fwd smp/s':>10} {'f+b smp/s':>10} {'fwd GF/s':>9} {'f+b GF/s':>9} {'f+b x ref':>9} {'rel err':>8}")
    lines += [header, "-" * len(header)]
    reference = {(r.op, r.dtype, r.batch, r.hidden): r.forward_backward_ms for r in report.kernels
                 if r.backend == "reference"}
    for r in report.kernels:
        base = reference.get((r.op, r.dtype, r.batch, r.hidden))
        ratio = base / r.forward_backward_ms if base and r.forward_backward_ms else None
        line = (f"{r.op:6} {r.dtype:8} {r.batch:>5} {r.hidden:>4} {r.backend:10} {_number(r.forward_ms, 2):>9} "
                f"{_number(r.forward_backward_ms, 2):>9} {_number(r.forward_samples_per_s, 0):>10} "
                f"{_number(r.forward_backward_samples_per_s, 0):>10} {_number(r.forward_gflops, 2):>9} "
                f"{_number(r.forward_backward_gflops, 2):>9} {_number(ratio, 2):>9} "
                f"{'n/a' if r.max_rel_error is None else f'{r.max_rel_error:.1e}':>8}")
        lines.append(line + (f"  {r.error}" if r.error else ""))
    if report.training:
        lines += ["", f"DIEN training (batch {report.config.train_batch}, {report.config.steps} steps, "
                      f"hidden {report.config.train_hidden}):"]
        for r in report.training:
            lines.append(f"  {r.backend:10} {_number(r.samples_per_s, 0):>8} samples/s" + (f"  {r.error}" if r.error else ""))
    return "\n".join(lines)


def configure(quick: bool, **overrides) -> BenchConfig:
    """The default or quick config with ``overrides`` (fields left None keep their value)."""
    config = BenchConfig.quick() if quick else BenchConfig()
    return replace(config, **{name: value for name, value in overrides.items() if value is not None})
