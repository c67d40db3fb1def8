"""GRU and AUGRU recurrences behind one dispatching API.

    gru(x, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, backend=None) -> (out, h_last)
    augru(x, att, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, backend=None) -> (out, h_last)
    project(x, weight_ih, bias_ih, backend=None) -> gi   (the input projections [B, T, 3H] of every step)
    gru_projected(gi, lengths, weight_hh, bias_hh, h0=None, backend=None) -> (out, h_last)
    augru_projected(gi, att, lengths, weight_hh, bias_hh, h0=None, backend=None) -> (out, h_last)
    augru_last(gi, att, lengths, weight_hh, bias_hh, h0=None, rows=None, backend=None) -> h_last
        (gi [R, T, 3H] read through rows [B]: candidates share their request's projections without a copy)

``with use_backend(name):`` runs every call inside the block on one backend (``DIEN_KERNEL`` does it per process).

Backends: ``reference`` (reference.py, the specification), ``cpu`` (cpu.py; its C++ time loops are built by
``make setup``) and ``triton`` (triton_recurrence.py, CUDA; imported on first use). The shared test inputs
and the benchmark live above the model, in ``dien.bench.kernel_cases`` and ``dien.bench.kernels``.

This package imports neither Ray nor the model code, so it runs on a bare GPU machine.
"""
from dien.kernels.dispatch import (augru, augru_last, augru_projected, available_backends, gru, gru_projected,
                                   project, resolve_backend, use_backend)

__all__ = ["gru", "augru", "project", "gru_projected", "augru_projected", "augru_last", "available_backends",
           "resolve_backend", "use_backend"]
