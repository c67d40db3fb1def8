"""The command-line options that say which raw behavior log to read (``SourceConfig``), shared by every job
that reads one: ``jobs/prepare_data.py`` and ``jobs/load_histories.py``."""
from __future__ import annotations

import argparse

from dien.data.events import ColumnMapping, ItemColumns
from dien.data.formats import FORMATS
from dien.data.readers import SOURCES, SourceConfig
from dien.data.synthetic import SyntheticConfig
from dien.options import add_options, from_options


def add_source_options(parser: argparse.ArgumentParser, data_seed_help: str) -> None:
    """``--source`` and what each source reads (input files, columns, the item table, the generator)."""
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
    generator = parser.add_argument_group("synthetic source")
    size = generator.add_mutually_exclusive_group()
    size.add_argument("--users", type=int, help=f"users (default {SyntheticConfig.n_users})")
    size.add_argument("--events", type=int, help="about this many events (sets --users from the events per user)")
    add_options(generator, SyntheticConfig, exclude=("n_users", "seed"), names={"n_categories": "categories"})
    generator.add_argument("--data-seed", type=int, help=data_seed_help)


def source_from_options(args: argparse.Namespace, seed: int) -> SourceConfig:
    """The :class:`SourceConfig` of parsed options; ``seed``: the generator's when ``--data-seed`` is not given."""
    users = args.users or SyntheticConfig.n_users
    if args.events is not None:
        users = max(1, round(args.events / ((args.min_events + args.max_events) / 2)))
    synthetic = from_options(args, SyntheticConfig, n_users=users,
                             seed=seed if args.data_seed is None else args.data_seed)
    return SourceConfig(
        kind=args.source, inputs=tuple(args.input), format=args.format, columns=ColumnMapping.parse(args.columns),
        keep_events=tuple(e.strip() for e in args.keep_events.split(",")) if args.keep_events else None,
        meta=tuple(args.meta), synthetic=synthetic, items=tuple(args.items), items_format=args.items_format,
        item_columns=ItemColumns.parse(args.item_columns), category_separator=args.category_separator or None,
        strict=args.strict,
    )
