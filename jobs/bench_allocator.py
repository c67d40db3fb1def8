"""Offline scoring candidates/s with glibc's default allocator against retain_freed_memory (what every scorer
replica applies), for the student (hidden 32) and the teacher (hidden 108); each mode in fresh processes, in
interleaved rounds, best kept.

    python jobs/bench_allocator.py --out runs/bench_allocator.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dien.bench.allocator import MODES, score_in_fresh_process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 108])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="runs/bench_allocator.json")
    args = parser.parse_args(argv)
    best = {(hidden, mode): 0.0 for hidden in args.hidden for mode in MODES}
    for _ in range(args.rounds):
        for key in best:
            best[key] = max(best[key], score_in_fresh_process(key[1], key[0]))
    print(f"{'hidden':>6} {'glibc default':>14} {'retain freed':>13} {'ratio':>6}   (candidates/s, one core)")
    rows = []
    for hidden in args.hidden:
        default, retained = best[(hidden, "default")], best[(hidden, "retain")]
        rows.append({"hidden": hidden, "default": default, "retain": retained, "ratio": retained / default})
        print(f"{hidden:>6} {default:>14.0f} {retained:>13.0f} {retained / default:>5.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rounds": args.rounds, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
