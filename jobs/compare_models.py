"""Train DIEN and the paper's baselines on the same synthetic data over several seeds; print and save a table.

    python jobs/compare_models.py                  # the default synthetic data, every model, 3 seeds
    python jobs/compare_models.py --preset demo    # smaller and faster (what `make demo` runs)
"""
from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace

import torch

from dien.model import MODELS
from dien.train.compare import CompareConfig, compare_models, format_table, write_report

PRESETS = {
    "default": CompareConfig(),
    "demo": replace(CompareConfig(), synthetic=replace(CompareConfig().synthetic, n_users=12_000),
                    models=("base", "din", "dien"), seeds=(0, 1)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="default")
    parser.add_argument("--models", help=f"comma-separated subset of: {', '.join(MODELS)}")
    parser.add_argument("--seeds", type=int, help="number of seeds (0, 1, ...)")
    parser.add_argument("--users", type=int, help="synthetic users")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--kernel", choices=("reference", "cpu"), help="kernel backend (default: the fastest)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--out", default="runs/compare_models.json", help="JSON report path")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    config = PRESETS[args.preset]
    if args.models:
        config = replace(config, models=tuple(args.models.split(",")))
    if args.seeds:
        config = replace(config, seeds=tuple(range(args.seeds)))
    if args.users:
        config = replace(config, synthetic=replace(config.synthetic, n_users=args.users))
    if args.epochs:
        config = replace(config, train=replace(config.train, epochs=args.epochs))
    if args.kernel:
        os.environ["DIEN_KERNEL"] = args.kernel
    torch.set_num_threads(args.threads)

    report = compare_models(config, out=args.out)
    write_report(report, args.out)
    print(format_table(report))
    print(f"report written to {args.out}")


if __name__ == "__main__":
    main()
