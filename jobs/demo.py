"""The whole platform on a local cluster, the way its users run it (`make demo`, about 4-5 minutes on 2 cores):
cluster-up, then prepare data, train the teacher, distil the student and evaluate both as jobs on the cluster,
serve deploy, a few scoring requests, a QPS run, cluster-down and a summary (``dien.bench.demo``). Outputs go to
--out (replaced): data/, artifacts/, logs/ (each step's full output), evaluate.json, qps/, serve.yaml.

    python jobs/demo.py                     # what `make demo` runs
    python jobs/demo.py --users 20000 --epochs 2
"""
from __future__ import annotations

import argparse
import signal
import sys

from dien.bench.demo import ROOT, Demo, run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output directory (replaced)")
    parser.add_argument("--users", type=int, default=10_000, help="synthetic users")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the teacher and of the student")
    parser.add_argument("--qps-seconds", type=float, default=20.0, help="length of the QPS measurement")
    args = parser.parse_args()
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, through the `finally` that stops the cluster.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    return run(Demo(out=(ROOT / args.out).resolve(), users=args.users, epochs=args.epochs,
                    qps_seconds=args.qps_seconds))


if __name__ == "__main__":
    sys.exit(main())
