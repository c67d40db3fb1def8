r"""Raw behavior logs -> a DIEN dataset directory (train/valid/test samples, vocabularies, user histories).

    python jobs/prepare_data.py --source synthetic --events 1000000 --out data/synthetic
    python jobs/prepare_data.py --source events --input logs/ --format csv \
        --columns user=uid,item=sku,category=cat,timestamp=ts,event_type=kind --keep-events click,buy --out data/logs
    python jobs/prepare_data.py --source amazon --input reviews_Books_5.json.gz --meta meta_Books.json.gz \
        --out data/books
    ray job submit -- $PWD/.venv/bin/python $PWD/jobs/prepare_data.py … --out $PWD/data/x   (joins via RAY_ADDRESS)
"""
from __future__ import annotations

import argparse
import logging
import sys

import ray

from dien.cluster import connect
from dien.data.events import InputError
from dien.data.pipeline import PrepareConfig, PrepareSummary, prepare
from dien.data.samples import SampleConfig
from dien.data.source_options import add_source_options, source_from_options
from dien.options import add_options, from_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_options(parser, data_seed_help="generator seed (default: --seed)")
    parser.add_argument("--out", required=True, help="dataset directory to write")

    add_options(parser.add_argument_group("samples"), SampleConfig, exclude=("targets_since",))
    add_options(parser.add_argument_group("preparation"), PrepareConfig, exclude=("out", "source", "samples"))

    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded Ray)")
    cluster.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded Ray (default: max(4, 2×cores))")
    cluster.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                         help="Ray Data progress bars")

    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> PrepareConfig:
    return from_options(args, PrepareConfig, out=args.out, source=source_from_options(args, args.seed),
                        samples=from_options(args, SampleConfig))


def print_summary(summary: PrepareSummary) -> None:
    rejected = ", ".join(f"{reason}: {n:,}" for reason, n in summary.rejected.items()) or "none"
    print(f"prepared {summary.out} in {summary.seconds:.1f}s")
    print(f"  events read   {summary.events_read:,} (kept {summary.events_kept:,}, "
          f"filtered {summary.events_filtered:,}, rejected {summary.events_rejected:,})")
    print(f"  rejected      {rejected}")
    print(f"  users         {summary.users:,}")
    print(f"  items         {summary.items:,} in {summary.categories:,} categories")
    if summary.uncategorized.get("events"):
        print(f"  no category   {summary.uncategorized['events']:,} events of {summary.uncategorized['items']:,} "
              "items the item table does not list (out-of-vocabulary category)")
    print("  samples       " + " | ".join(f"{split} {n:,}" for split, n in summary.samples.items()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = build_config(args)
        connect(args.address, args.num_cpus)
        ray.data.DataContext.get_current().enable_progress_bars = args.progress
        summary = prepare(config)
    except (InputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
