"""Serving benchmarks: a concurrent HTTP load generator and the QPS benchmark of the Serve application.

``workload`` builds score requests from a prepared dataset, ``load`` drives a URL with them (closed and
open loop), ``noop`` is the no-op application that gives the ceiling, ``deploy`` applies variants of a Serve
config, ``models`` makes small artifacts when none exist, ``qps`` runs the comparison (``make
benchmark-qps``) and ``report`` writes its table, JSON, Markdown and plot.
"""
