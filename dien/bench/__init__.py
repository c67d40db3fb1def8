"""Benchmarks and reports: the top library layer (nothing below imports it; jobs/ are its entry points).

Serving: ``workload`` builds score requests from a prepared dataset, ``load`` drives a URL with them (closed and
open loop), ``noop`` is the no-op application that gives the ceiling, ``deploy`` applies variants of a Serve
config, ``models`` makes small artifacts when none exist, ``qps`` runs the comparison (``make
benchmark-qps``) and ``report`` writes its table, JSON, Markdown and plot; ``redeploy_check`` rolls a deployment
to a new model under load.
Models: ``compare`` (the paper's Table 2 on synthetic data), ``distill_report`` (teacher, student, scratch) and
``scoring_cost`` (offline candidates/s).
Kernels: ``kernel_cases`` (seeded recurrence inputs shared with the tests) and ``kernels`` (the backend
benchmark, ``jobs/bench_kernels.py``).
"""
