"""The daily loop on MovieLens: warm-start on each new time window against full retraining, tested on the next.

    python jobs/daily_loop.py                          # 4 windows, DIEN, seed 0 (make daily-loop)
    python jobs/daily_loop.py --seeds 0,1,2 --windows 5
    ray job submit -- "$PWD/.venv/bin/python" jobs/daily_loop.py --out "$PWD/runs/daily_loop"

Prints a table per window (test AUC of no update, warm start and full retraining; training seconds) and
writes daily_loop.json and daily_loop.png under --out. Prepared datasets are kept there and reused.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from dien.bench.daily_loop import DailyLoop, DailyLoopConfig, format_report
from dien.model import MODELS

DEFAULTS = DailyLoopConfig()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", default=DEFAULTS.ratings, help="(default: %(default)s)")
    parser.add_argument("--movies", default=DEFAULTS.movies, help="(default: %(default)s)")
    parser.add_argument("--windows", type=int, default=DEFAULTS.windows, help="(default: %(default)s)")
    parser.add_argument("--model", choices=list(MODELS), default=DEFAULTS.model, help="(default: %(default)s)")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULTS.seeds)), help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=DEFAULTS.workers, help="(default: %(default)s)")
    parser.add_argument("--out", default=DEFAULTS.out, help="(default: %(default)s)")
    args = parser.parse_args()
    if args.windows < 3:
        parser.error("--windows must be at least 3: a first window, one to compare on, one to test on")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = replace(DEFAULTS, ratings=args.ratings, movies=args.movies, windows=args.windows, model=args.model,
                     seeds=tuple(int(s) for s in args.seeds.split(",")), workers=args.workers, out=args.out)
    report = DailyLoop(config).run()
    print(format_report(report))
    print(f"report: {config.out}/daily_loop.json, plot: {config.out}/daily_loop.png ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
