"""The user-history stores under load: bulk load behaviors/s into Redis, POST /v1/events events/s, and scoring
candidates/s with the Redis store against the snapshot store (same student, same requests, rounds side by side).

    python jobs/bench_history.py                    # starts its own redis-server and embedded Ray (~3 min)
    python jobs/bench_history.py --redis redis://127.0.0.1:6379/0 --rounds 5

Writes results.json to --out (default runs/bench_history) and prints the table.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, replace
from pathlib import Path

from dien.bench.history_store import HistoryBenchConfig, format_report, run
from dien.bench.load import LoadSettings
from dien.bench.qps import Inputs


def parse_config(argv: list[str] | None = None) -> HistoryBenchConfig:
    defaults, inputs, load = HistoryBenchConfig(), Inputs(), LoadSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=inputs.data, help="prepared dataset (made small if the default is missing)")
    parser.add_argument("--student", default=inputs.student, help="artifact (made small if the default is missing)")
    parser.add_argument("--bulk-data", help="prepared dataset the bulk load is timed on (default: --data)")
    parser.add_argument("--redis", help="a running Redis to use (default: start redis-server on a free port)")
    parser.add_argument("--candidates", type=int, default=defaults.candidates, help="(default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency,
                        help="scoring requests in flight (default %(default)s)")
    parser.add_argument("--events-per-request", type=int, default=defaults.events_per_request,
                        help="(default %(default)s)")
    parser.add_argument("--event-concurrency", type=int, default=defaults.event_concurrency,
                        help="events requests in flight (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=defaults.rounds, help="(default %(default)s)")
    parser.add_argument("--duration", type=float, default=load.duration_s,
                        help="seconds per window (default %(default)s)")
    parser.add_argument("--warmup", type=float, default=load.warmup_s, help="(default %(default)s)")
    parser.add_argument("--out", default=defaults.out, help="(default %(default)s)")
    args = parser.parse_args(argv)
    return replace(defaults, inputs=replace(inputs, data=args.data, student=args.student), redis=args.redis,
                   bulk_data=args.bulk_data,
                   candidates=args.candidates, concurrency=args.concurrency,
                   events_per_request=args.events_per_request, event_concurrency=args.event_concurrency,
                   rounds=args.rounds, load=replace(load, duration_s=args.duration, warmup_s=args.warmup),
                   out=args.out)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    report = run(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    print(format_report(report))
    print(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
