"""Score files of requests offline with a model artifact, through Ray Data on all workers, with the Serve
scorer's own code (one output row per candidate, Parquet).

    python jobs/score.py --model artifacts/student --input requests.parquet --output runs/scores \
        --histories data/synthetic --workers 2
    ray job submit -- "$PWD/.venv/bin/python" "$PWD/jobs/score.py" --model "$PWD/artifacts/student" ...

A request row: request_id?, user_id?, history_item?, history_category?, candidate_item, candidate_category?
(README: offline batch scoring). Runs on the cluster RAY_ADDRESS names, or an embedded Ray.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from dien.artifacts import ArtifactError
from dien.cluster import connect
from dien.serve.batch_scoring import BatchScoringConfig, score_requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = BatchScoringConfig(model="", inputs=(), output="")
    parser.add_argument("--model", required=True, help="artifact directory")
    parser.add_argument("--input", action="append", required=True,
                        help="request files, directories or globs (repeatable)")
    parser.add_argument("--output", required=True, help="output directory for the Parquet scores (must not exist)")
    parser.add_argument("--histories", help="prepared dataset whose user histories serve requests without one")
    parser.add_argument("--format", choices=("parquet", "jsonl"), help="(default: from the file extension)")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help=f"scoring workers, each holding the model (default: {defaults.workers})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size,
                        help=f"requests per scored batch (default: {defaults.batch_size})")
    parser.add_argument("--gpu", action="store_true", help="a GPU per worker")
    parser.add_argument("--category-conflict", choices=("ignore", "reject"), default=defaults.category_conflict,
                        help=f"a category contradicting the item table (default: {defaults.category_conflict})")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded Ray)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        config = BatchScoringConfig(model=args.model, inputs=tuple(args.input), output=args.output,
                                    histories=args.histories, format=args.format, workers=args.workers,
                                    batch_size=args.batch_size, gpu=args.gpu,
                                    category_conflict=args.category_conflict)
        connect(args.address)
        summary = score_requests(config)
    except (ArtifactError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
