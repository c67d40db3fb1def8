"""Measure the ways of shuffling training samples: seconds per epoch of reading and collating, and how many
distinct users a batch holds (against a uniform permutation).

    python jobs/bench_ingest.py --data data/ml --out runs/bench_ingest.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import ray

from dien.bench.ingest import METHODS, format_table, measure, to_dict
from dien.cluster import connect
from dien.data.dataset_dir import DatasetDir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset directory")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="runs/bench_ingest.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        dataset = DatasetDir(args.data)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    connect()
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = [measure(dataset, method, args.batch_size, on_result=lambda r: print(f"measured {r.method}", flush=True))
               for method in args.methods]
    print(format_table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": str(args.data), "samples": dataset.manifest["counts"]["train"],
                               "batch_size": args.batch_size, "results": to_dict(results)}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
