"""Benchmark of the whole prepare job on synthetic events: throughput and peak memory per input size.

    python jobs/bench_prepare.py --events 1000000 10000000 [--protocol paper] [--out runs/bench_prepare.json]

Each size runs ``jobs/prepare_data.py`` in a fresh process while ``dien.bench.prepare`` samples the memory of
its whole process tree (Linux only).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from dien.bench.prepare import format_table, run_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--protocol", default="paper", choices=["paper", "sliding"])
    parser.add_argument("--out", default="runs/bench_prepare.json")
    parser.add_argument("--workdir", help="where the datasets are written (default: a temporary directory)")
    parser.add_argument("job_args", nargs=argparse.REMAINDER, help="after --: more prepare_data.py arguments")
    args = parser.parse_args()
    extra = [a for a in args.job_args if a != "--"]

    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as workdir:
        for events in args.events:
            print(f"preparing {events:,} synthetic events ...", file=sys.stderr, flush=True)
            results.append(run_size(Path(__file__).with_name("prepare_data.py"), events, args.protocol, extra,
                                    Path(workdir)))
    print(format_table(results))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "command": sys.argv,
                                          "results": results}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
