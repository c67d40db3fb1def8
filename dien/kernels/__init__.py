"""GRU and AUGRU recurrences behind one dispatching API.

    gru(x, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, backend=None) -> (out, h_last)
    augru(x, att, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, backend=None) -> (out, h_last)

Backends: ``reference`` (reference.py, the specification), ``cpu`` (cpu.py; its C++ time loops are built by
``make setup``) and ``triton`` (triton_recurrence.py, CUDA; imported on first use). The shared test inputs
and the benchmark live above the model, in ``dien.bench.kernel_cases`` and ``dien.bench.kernels``.

This package imports neither Ray nor the model code, so it runs on a bare GPU machine.
"""
from dien.kernels.dispatch import augru, available_backends, gru, resolve_backend

__all__ = ["gru", "augru", "available_backends", "resolve_backend"]
