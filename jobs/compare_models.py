"""Train DIEN and the paper's baselines on the same synthetic data over several seeds; print and save a table.

    python jobs/compare_models.py                  # the default synthetic data, every model, 3 seeds
    python jobs/compare_models.py --preset demo    # smaller and faster (what `make demo` runs)
    python jobs/compare_models.py --seeds 0,1 --out a.json &  python jobs/compare_models.py --seeds 2 --out b.json
    python jobs/compare_models.py --merge a.json b.json   # one table from seeds run in parallel
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from dien.model import MODELS
from dien.bench.compare import CompareConfig, compare_models, format_table, merge_reports, write_report

PRESETS = {
    "default": CompareConfig(),
    "demo": replace(CompareConfig(), synthetic=replace(CompareConfig().synthetic, n_users=12_000),
                    models=("base", "din", "dien"), seeds=(0, 1)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="default")
    parser.add_argument("--models", help=f"comma-separated subset of: {', '.join(MODELS)}")
    parser.add_argument("--seeds", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--users", type=int, help="synthetic users")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--history-sum", action="store_true",
                        help="DIN/DIEN MLPs also get the sum-pooled history (the official code's inputs)")
    parser.add_argument("--kernel", choices=("reference", "cpu"), help="kernel backend (default: the fastest)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--out", default="runs/compare_models.json", help="JSON report path")
    parser.add_argument("--merge", nargs="+", metavar="REPORT",
                        help="train nothing: pool the runs of these reports (other seeds, same settings)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.merge:
        report = merge_reports([json.loads(Path(path).read_text()) for path in args.merge])
        write_report(report, args.out)
        print(format_table(report))
        print(f"report written to {args.out}")
        return

    config = PRESETS[args.preset]
    if args.models:
        config = replace(config, models=tuple(args.models.split(",")))
    if args.seeds:
        config = replace(config, seeds=tuple(int(seed) for seed in args.seeds.split(",")))
    if args.users:
        config = replace(config, synthetic=replace(config.synthetic, n_users=args.users))
    if args.epochs:
        config = replace(config, train=replace(config.train, epochs=args.epochs))
    if args.history_sum:
        config = replace(config, history_sum=True)
    if args.kernel:
        os.environ["DIEN_KERNEL"] = args.kernel
    torch.set_num_threads(args.threads)

    report = compare_models(config, out=args.out)
    write_report(report, args.out)
    print(format_table(report))
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()
