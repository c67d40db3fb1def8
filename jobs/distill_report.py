"""Report: AUC/GAUC of the teacher, the distilled student and a from-scratch student, and scoring cost.

    python jobs/distill_report.py                      # prepares the default synthetic data first
    python jobs/distill_report.py --data data/synthetic --epochs 2
    python jobs/distill_report.py --seeds 0,1,2         # mean and std over seeds, with the lambda = 0 ablation
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import replace

from dien.bench.distill_report import DistillReportConfig, format_report, run_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="prepared dataset (default: prepare the default synthetic data)")
    parser.add_argument("--out", default=DistillReportConfig.out)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--hint-weight", type=float, default=DistillReportConfig.hint_weight)
    parser.add_argument("--workers", type=int, default=DistillReportConfig.workers)
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds (default: 0)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    config = DistillReportConfig(out=args.out, data=args.data, hint_weight=args.hint_weight, workers=args.workers,
                                 seeds=tuple(int(seed) for seed in args.seeds.split(",")))
    train = config.train
    if args.epochs:
        train = replace(train, epochs=args.epochs)
    if args.lr:
        train = replace(train, lr=args.lr)
    report = run_report(replace(config, train=train))
    print(format_report(report))
    print(f"report written to {args.out}/distill_report.json")


if __name__ == "__main__":
    main()
