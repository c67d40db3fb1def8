"""Score model artifacts on a prepared dataset split and print their metrics side by side.

    python jobs/evaluate.py --model artifacts/teacher --model artifacts/student --data data/synthetic
    python jobs/evaluate.py --model artifacts/a --model artifacts/b --curves runs/curves.png   # training curves only
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dien.artifacts import ArtifactError, load_artifact
from dien.curves import draw_curves, read_curves
from dien.data.dataset_dir import DatasetDir
from dien.train.evaluate import evaluate_artifact


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="artifact directory (repeatable)")
    parser.add_argument("--data", help="prepared dataset directory (needed to score; not for --curves)")
    parser.add_argument("--curves", help="draw the artifacts' training curves side by side into this PNG")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    if args.data is None and args.curves is None:
        parser.error("give --data to score the artifacts, --curves to draw their training curves, or both")
    try:
        artifacts = [load_artifact(path) for path in args.model]
        dataset = DatasetDir(args.data) if args.data else None
    except (ArtifactError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.curves:
        curves = {path: read_curves(artifact.path) for path, artifact in zip(args.model, artifacts)}
        for path in [p for p, points in curves.items() if not points]:
            print(f"note: {path} was saved without a training curve", file=sys.stderr)
        Path(args.curves).parent.mkdir(parents=True, exist_ok=True)
        if not draw_curves(curves, args.curves):
            print("error: drawing needs matplotlib: pip install matplotlib", file=sys.stderr)
            return 2
        print(f"wrote {args.curves}")
    if dataset is None:
        return 0

    rows = []
    for path, artifact in zip(args.model, artifacts):
        metrics = evaluate_artifact(artifact, dataset, args.split)
        rows.append({"artifact": path, "model": artifact.name, "hidden": artifact.config.hidden, **metrics})
    print(f"{'artifact':<32} {'model':<10} {'hidden':>6} {args.split + ' AUC':>9} {'± s.e.':>7} {'GAUC':>7} "
          f"{'logloss':>8}")
    for row in rows:
        print(f"{row['artifact'][-32:]:<32} {row['model']:<10} {row['hidden']:>6} {row['auc']:>9.4f} "
              f"{row['auc_se']:>7.4f} {row['gauc']:>7.4f} {row['logloss']:>8.4f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"data": args.data, "split": args.split, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
