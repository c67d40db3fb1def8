"""Our DIEN, DIN and BaseModel (through the Ray Train path of jobs/train.py, and DIEN through fit) against
DeepCTR-Torch's DIEN and DIN on one prepared dataset, same samples, same budget, several seeds.

    python jobs/prepare_data.py --source events --input ../shared/data/ml-latest-small/ratings.csv \\
        --columns user=userId,item=movieId,timestamp=timestamp --items ../shared/data/ml-latest-small/movies.csv \\
        --item-columns item=movieId,category=genres --protocol sliding --eval-targets 10 --out data/ml
    python jobs/bench_quality.py --data data/ml                    # 2 epochs each, 3 seeds
    python jobs/bench_quality.py --data data/ml --budget best      # each model to its best validation epoch

Needs the optional extra for the peers: pip install -e '.[peers]'. Prints the table (test AUC mean ± std over
seeds, the AUC's standard error, GAUC, logloss, training samples/s) with the goals' verdicts and writes
<out>/quality.json; a re-run with the same settings reuses the runs the report already holds.
"""
from __future__ import annotations

import argparse
import logging
import sys

from dien.bench.quality import BUDGETS, MODEL_NAMES, QualityConfig, format_report, run_benchmark
from dien.cluster import connect
from dien.data.dataset_dir import DatasetDir


def main(argv: list[str] | None = None) -> int:
    defaults = QualityConfig(data="")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset directory")
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(defaults.models))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--budget", choices=BUDGETS, default=defaults.budget,
                        help="fixed: --epochs each; best: up to --max-epochs with early stopping on validation AUC")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--max-epochs", type=int, default=defaults.max_epochs)
    parser.add_argument("--patience", type=int, default=defaults.patience)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help="samples per optimizer step (split among our Ray Train workers)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="Ray Train workers of our models")
    parser.add_argument("--peer-lr", type=float, default=defaults.peer_lr,
                        help="the DeepCTR-Torch models' learning rate (default: theirs, 1e-3)")
    parser.add_argument("--out", default=defaults.out, help="report and run directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        DatasetDir(args.data)
        config = QualityConfig(data=args.data, out=args.out, models=tuple(args.models), seeds=tuple(args.seeds),
                               budget=args.budget, epochs=args.epochs, max_epochs=args.max_epochs,
                               patience=args.patience, batch_size=args.batch_size, workers=args.workers,
                               peer_lr=args.peer_lr)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    connect()
    try:
        report = run_benchmark(config)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_report(report))
    print(f"report written to {args.out}/quality.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
