"""Training throughput of DIEN on Ray Train with 1 and 2 workers, and where the time goes.

    python jobs/bench_train.py --data data/synthetic          # prints a table, writes runs/bench_train.json

Each setting trains one epoch from scratch; the workers report samples/s, the seconds spent waiting for and
collating batches (data) and the epoch's wall time; compute is the difference.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

from dien.train.distributed import ClusterConfig, TrainJob, run_training
from dien.train.loop import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset directory")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--hidden", type=int, default=36)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="runs/bench_train.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    storage = Path(args.out).parent / "bench_train_runs"
    base = TrainJob(data=args.data, model="dien", model_options={"hidden": args.hidden},
                    train=TrainConfig(epochs=1, batch_size=args.batch_size))
    rows = []
    for workers in args.workers:
        name = f"workers{workers}"
        shutil.rmtree(storage / name, ignore_errors=True)
        job = replace(base, cluster=ClusterConfig(workers=workers, cpus_per_worker=args.cpus_per_worker,
                                                  storage=str(storage), run_name=name, max_failures=0))
        metrics = run_training(job).metrics
        data, epoch = metrics["data_seconds"], metrics["epoch_seconds"]
        rows.append({"workers": workers, "samples_per_second": metrics["samples_per_second"],
                     "epoch_seconds": epoch, "data_seconds": data, "compute_seconds": epoch - data,
                     "data_share": data / epoch, "valid_auc": metrics["valid_auc"]})

    print(f"{'workers':>7} {'samples/s':>10} {'epoch s':>8} {'data s':>7} {'compute s':>9} {'data %':>7}")
    for r in rows:
        print(f"{r['workers']:>7} {r['samples_per_second']:>10.0f} {r['epoch_seconds']:>8.1f} {r['data_seconds']:>7.1f} "
              f"{r['compute_seconds']:>9.1f} {100 * r['data_share']:>6.0f}%")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"data": args.data, "hidden": args.hidden, "batch_size": args.batch_size,
                                          "cpus_per_worker": args.cpus_per_worker, "rows": rows}, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
