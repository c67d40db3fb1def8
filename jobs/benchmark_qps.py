"""Serving throughput: requests/s, candidates/s and latency percentiles of the DIEN Serve application.

    python jobs/benchmark_qps.py                 # embedded Ray: no-op ceiling, student (Scorer deployment, in
                                                 # ingress, batching off), teacher, reference kernels, and the
                                                 # plain uvicorn peers (~15 min; models made if missing)
    python jobs/benchmark_qps.py --quick         # fewer, shorter measurements (~3 min)
    python jobs/benchmark_qps.py --url http://127.0.0.1:8000 --data data/synthetic --candidates 100 \\
        --concurrency 32 --duration 20           # a deployment that is already running

Writes results.json, results.md and latency_vs_throughput.png to --out (default runs/benchmark_qps).
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace

from dien.bench.load import LoadSettings
from dien.bench.qps import QUICK, VARIANTS, Inputs, QpsConfig, run
from dien.bench.report import format_table, write_outputs
from dien.bench.workload import FORMS


def parse_config(argv: list[str] | None = None) -> tuple[QpsConfig, str]:
    defaults, inputs, load = QpsConfig(), Inputs(), LoadSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"concurrency {' '.join(map(str, QUICK.concurrency))}, {QUICK.load.duration_s:g} s windows")
    parser.add_argument("--url", help="measure the deployment running here instead of deploying one (127.0.0.1 only)")
    parser.add_argument("--data", default=inputs.data, help="prepared dataset the requests come from")
    parser.add_argument("--student", default=inputs.student, help="student artifact (made small if the default is missing)")
    parser.add_argument("--teacher", default=inputs.teacher, help="teacher artifact (made small if the default is missing)")
    parser.add_argument("--serve-config", default=defaults.serve_config, help="Serve config whose variants are deployed")
    parser.add_argument("--candidates", type=int, nargs="+", help=f"candidates per request (default "
                        f"{' '.join(map(str, defaults.candidates))})")
    parser.add_argument("--concurrency", type=int, nargs="+", help="closed-loop concurrency levels")
    parser.add_argument("--rates", type=float, nargs="+", help="open-loop request rates (requests/s)")
    parser.add_argument("--open-fractions", type=float, nargs="+",
                        help="local mode: open-loop rates as fractions of the batched student's best requests/s")
    parser.add_argument("--rounds", type=int, help="rounds of the closed-loop sweep and of the open-loop rates; "
                        f"each setting keeps its median round (default {defaults.rounds})")
    parser.add_argument("--duration", type=float, help=f"seconds measured per setting (default {load.duration_s:g})")
    parser.add_argument("--warmup", type=float, help=f"seconds of load before each window (default {load.warmup_s:g})")
    parser.add_argument("--timeout", type=float, help=f"seconds before a request counts as failed ({load.timeout_s:g})")
    parser.add_argument("--throughput-optimized", action=argparse.BooleanOptionalAction,
                        default=defaults.throughput_optimized,
                        help="local mode: RAY_SERVE_THROUGHPUT_OPTIMIZED=1 in the embedded Ray")
    parser.add_argument("--haproxy", action=argparse.BooleanOptionalAction, default=defaults.haproxy,
                        help="local mode: HAProxy in front of the ingress replicas (RAY_SERVE_ENABLE_HA_PROXY=1)")
    parser.add_argument("--form", choices=FORMS, default=defaults.form,
                        help="lists of behaviors in the bodies as objects or as compact columns")
    parser.add_argument("--inline-history", action=argparse.BooleanOptionalAction, default=defaults.inline_history,
                        help="send each user's history in the body (else the ingress looks it up by user_id)")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help=f"local mode: measure only these variants (quoted names: {'; '.join(VARIANTS)})")
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=defaults.peers,
                        help="local mode: also measure the plain uvicorn endpoints (ours, DeepCTR-Torch's DIEN)")
    parser.add_argument("--port", type=int, help="local mode: HTTP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--out", default=defaults.out, help="directory for results.json, results.md and the plot")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")

    config = QUICK if args.quick else defaults
    load = replace(config.load, **{k: v for k, v in (("duration_s", args.duration), ("warmup_s", args.warmup),
                                                      ("timeout_s", args.timeout)) if v is not None})
    chosen = {"candidates": args.candidates, "concurrency": args.concurrency, "rates": args.rates,
              "open_fractions": args.open_fractions, "port": args.port, "url": args.url,
              "variants": args.variants, "rounds": args.rounds}
    config = replace(config, load=load, serve_config=args.serve_config, out=args.out,
                     throughput_optimized=args.throughput_optimized, haproxy=args.haproxy, form=args.form,
                     inline_history=args.inline_history, peers=args.peers,
                     inputs=replace(config.inputs, data=args.data, student=args.student, teacher=args.teacher),
                     **{k: tuple(v) if isinstance(v, list) else v for k, v in chosen.items() if v is not None})
    return config, args.log_level


def main(argv: list[str] | None = None) -> int:
    config, log_level = parse_config(argv)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = run(config)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(report))
    for kind, path in write_outputs(report, config.out).items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
