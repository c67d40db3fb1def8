"""Training samples/s of our DIEN against DeepCTR-Torch's DIEN at the same shapes (AUGRU + auxiliary loss,
hidden 36, batch 128, histories of lengths uniform in 1..100, 2 threads, CPU).

    python jobs/bench_train_speed.py --out runs/bench_train_speed.json

Needs the optional extra: pip install -e '.[peers]'.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from dien.bench import peers
from dien.bench.train_speed import SpeedConfig, format_report, run_benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = SpeedConfig()
    for spec in fields(SpeedConfig):
        parser.add_argument(f"--{spec.name.replace('_', '-')}", type=int, default=getattr(defaults, spec.name),
                            help=f"(default {getattr(defaults, spec.name)})")
    parser.add_argument("--out", default="runs/bench_train_speed.json")
    args = parser.parse_args(argv)
    if not peers.available():
        print("error: the DeepCTR-Torch peer needs the optional extra: pip install -e '.[peers]'", file=sys.stderr)
        return 2
    report = run_benchmark(SpeedConfig(**{spec.name: getattr(args, spec.name) for spec in fields(SpeedConfig)}))
    print(format_report(report))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
