"""Benchmark the GRU/AUGRU backends (forward, forward + backward) and DIEN training with each of them.

    python jobs/bench_kernels.py --quick
    python jobs/bench_kernels.py --out runs/bench_kernels.json            # batch 128 and 1024, hidden 32/36/108

Runs on CUDA when a GPU is visible (adding the triton backend, cuDNN's nn.GRU and bf16), else on the CPU.
Prints a table and writes the JSON report to --out.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from dien.bench import kernels as kernel_bench


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 128, hidden 36, 3 rounds, 3 training steps")
    parser.add_argument("--out", default="runs/bench_kernels.json", help="JSON report path")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--hiddens", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per measurement (best kept)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed DIEN training steps per backend")
    parser.add_argument("--train-batch", type=int, default=None, help="samples per DIEN training step (default 128)")
    parser.add_argument("--train-hidden", type=int, default=None, help="GRU hidden size of the trained DIEN (36)")
    parser.add_argument("--no-train", action="store_true", help="skip the end-to-end training benchmark")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    config = kernel_bench.configure(args.quick, batches=args.batches and tuple(args.batches),
                             hiddens=args.hiddens and tuple(args.hiddens), rounds=args.rounds,
                             train_steps=args.train_steps, train_batch=args.train_batch,
                             train_hidden=args.train_hidden)
    report = kernel_bench.run_benchmark(config, device, train=not args.no_train)
    print(kernel_bench.format_report(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_dict(), indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
