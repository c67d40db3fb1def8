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
from dien.data.events import ColumnMapping, InputError, ItemColumns
from dien.data.formats import FORMATS
from dien.data.pipeline import PrepareConfig, PrepareSummary, prepare
from dien.data.readers import SOURCES, SourceConfig
from dien.data.samples import SampleConfig
from dien.data.synthetic import SyntheticConfig
from dien.options import add_options, from_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=SOURCES, default="synthetic")
    parser.add_argument("--input", nargs="+", action="extend", default=[], metavar="PATH",
                        help="input files, directories or globs (events; amazon: the reviews)")
    parser.add_argument("--format", choices=FORMATS, help="input format (default: from the file extension)")
    parser.add_argument("--columns", help="column mapping user=…,item=…,category=…,timestamp=…[,event_type=…]")
    parser.add_argument("--keep-events", help="comma-separated event types to keep, e.g. click,buy")
    parser.add_argument("--meta", nargs="+", action="extend", default=[], metavar="PATH",
                        help="amazon: metadata files (asin, categories)")
    parser.add_argument("--strict", action="store_true",
                        help="a log file that cannot be read stops the job (default: its rows read so far are kept "
                             "and it counts as one rejected row, 'unreadable file', naming it)")
    items = parser.add_argument_group("item table (events source)")
    items.add_argument("--items", nargs="+", action="extend", default=[], metavar="PATH",
                       help="item table files giving each item's category (e.g. MovieLens movies.csv); the log's "
                            "category column is then not read, and events of items the table lacks get the "
                            "out-of-vocabulary category")
    items.add_argument("--items-format", choices=FORMATS, help="item table format (default: from the extension)")
    items.add_argument("--item-columns", help="item table column mapping item=…,category=… "
                                              "(default item=item_id,category=category)")
    items.add_argument("--category-separator", default=SourceConfig.category_separator,
                       help="a multi-valued category A|B|C takes its first value; '' keeps the whole text "
                            "(default %(default)r)")
    parser.add_argument("--out", required=True, help="dataset directory to write")

    add_options(parser.add_argument_group("samples"), SampleConfig)
    add_options(parser.add_argument_group("preparation"), PrepareConfig, exclude=("out", "source", "samples"))

    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded Ray)")
    cluster.add_argument("--num-cpus", type=int, help="logical CPUs of the embedded Ray (default: max(4, 2×cores))")
    cluster.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                         help="Ray Data progress bars")

    generator = parser.add_argument_group("synthetic source")
    size = generator.add_mutually_exclusive_group()
    size.add_argument("--users", type=int, help=f"users (default {SyntheticConfig.n_users})")
    size.add_argument("--events", type=int, help="about this many events (sets --users from the events per user)")
    add_options(generator, SyntheticConfig, exclude=("n_users", "seed"), names={"n_categories": "categories"})
    generator.add_argument("--data-seed", type=int, help="generator seed (default: --seed)")
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> PrepareConfig:
    users = args.users or SyntheticConfig.n_users
    if args.events is not None:
        users = max(1, round(args.events / ((args.min_events + args.max_events) / 2)))
    synthetic = from_options(args, SyntheticConfig, n_users=users,
                             seed=args.seed if args.data_seed is None else args.data_seed)
    source = SourceConfig(
        kind=args.source, inputs=tuple(args.input), format=args.format, columns=ColumnMapping.parse(args.columns),
        keep_events=tuple(e.strip() for e in args.keep_events.split(",")) if args.keep_events else None,
        meta=tuple(args.meta), synthetic=synthetic, items=tuple(args.items), items_format=args.items_format,
        item_columns=ItemColumns.parse(args.item_columns), category_separator=args.category_separator or None,
        strict=args.strict,
    )
    return from_options(args, PrepareConfig, out=args.out, source=source, samples=from_options(args, SampleConfig))


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
