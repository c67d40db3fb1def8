"""Train one model per trial (single-process fit, one torch thread each, trials in parallel processes) and print
their validation and test AUC: the sweeps that chose the library's defaults, on validation splits only.

    python jobs/sweep.py --data data/movielens --trials sweeps/movielens.jsonl --out runs/sweep_movielens.json
    python jobs/sweep.py --data synthetic --trials sweeps/synthetic.jsonl      # the default synthetic data
    python jobs/sweep.py --data data/movielens --trial '{"model": "din", "train_options": {"lr": 0.002}}'

A trial: {"model": ..., "model_options": {ModelConfig fields}, "train_options": {TrainConfig fields}, "seed": ...};
unnamed fields keep the library's defaults, so a sweep file that should reproduce a number names every setting
it depends on.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from dien.bench.sweep import SYNTHETIC, Trial, format_table, load_trials, run_sweep
from dien.data.dataset_dir import DatasetDir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help=f"prepared dataset directory, or {SYNTHETIC!r}")
    parser.add_argument("--trials", help="JSON-lines file of trials")
    parser.add_argument("--trial", action="append", default=[], help="one trial as JSON (repeatable)")
    parser.add_argument("--parallel", type=int, default=2, help="trials at a time (default: %(default)s)")
    parser.add_argument("--out", default="runs/sweep.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.data != SYNTHETIC:
            DatasetDir(args.data)
        trials = (load_trials(args.trials) if args.trials else []) + [Trial(**json.loads(t)) for t in args.trial]
    except (FileNotFoundError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not trials:
        print("error: no trials: give --trials FILE or --trial JSON", file=sys.stderr)
        return 2
    try:
        results = run_sweep(args.data, trials, args.parallel, args.out)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_table(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
