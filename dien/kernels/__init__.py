"""GRU and AUGRU recurrences behind one dispatching API.

    gru(x, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, backend=None) -> (out, h_last)
    augru(x, att, lengths, weight_ih, weight_hh, bias_ih, bias_hh, h0=None, backend=None) -> (out, h_last)

This package imports neither Ray nor the model code, so it runs on a bare GPU machine.
"""
from dien.kernels.dispatch import augru, available_backends, gru, resolve_backend

__all__ = ["gru", "augru", "available_backends", "resolve_backend"]
