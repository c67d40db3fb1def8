"""GRU and AUGRU recurrences behind one dispatching API.

    gru(x, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, backend=None) -> (out, h_last)
    augru(x, att, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, backend=None) -> (out, h_last)

Backends: ``reference`` (reference.py, the specification), ``cpu`` (cpu.py; its C++ time loops are built by
``make setup``) and ``triton`` (triton_recurrence.py, CUDA; imported on first use). ``cases.py`` and ``bench.py``
hold the shared test inputs and the benchmark (``jobs/bench_kernels.py``).

This package imports neither Ray nor the model code, so it runs on a bare GPU machine.
"""
from dien.kernels.dispatch import augru, available_backends, gru, resolve_backend

__all__ = ["gru", "augru", "available_backends", "resolve_backend"]
