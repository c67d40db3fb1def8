"""Load user histories into the Redis history store with Ray Data: a prepared dataset's latest histories, or a
raw event log read like ``jobs/prepare_data.py`` reads it (same --source options).

    python jobs/load_histories.py --dataset data/synthetic --redis redis://127.0.0.1:6379/0
    python jobs/load_histories.py --source events --input logs/ --columns user=uid,item=sku,timestamp=ts \
        --items items.csv --append --redis redis://127.0.0.1:6379/0
    ray job submit -- "$PWD/.venv/bin/python" "$PWD/jobs/load_histories.py" --dataset "$PWD/data/synthetic" ...

Serve reads what this writes when its config has history: {store: redis, url: ..., key_prefix: ...} with the
same URL and prefix (README: user-history stores). Prints users, behaviors, seconds and behaviors/s.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

import ray

from dien.cluster import connect
from dien.data.events import InputError
from dien.data.source_options import add_source_options, source_from_options
from dien.data.synthetic import SyntheticConfig
from dien.serve.config import RedisStoreConfig
from dien.serve.history import HistoryStoreError
from dien.serve.history_load import LoadConfig, load_histories


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="prepared dataset directory whose latest histories to load (instead of "
                                          "a raw log given with --source/--input)")
    add_source_options(parser, data_seed_help=f"generator seed (default {SyntheticConfig.seed})")
    store = parser.add_argument_group("store (the Serve config's history: {store: redis, ...})")
    fields = RedisStoreConfig.model_fields
    store.add_argument("--redis", default=fields["url"].default, help="Redis URL (default %(default)s)")
    store.add_argument("--key-prefix", default=fields["key_prefix"].default, help="(default %(default)s)")
    store.add_argument("--max-len", type=int, default=fields["max_len"].default,
                       help="newest behaviors kept per user (default %(default)s)")
    defaults = LoadConfig(dataset="-")
    parser.add_argument("--append", action="store_true",
                        help="a raw log's events are appended to the stored histories (an event already applied "
                             "counts once) instead of replacing each loaded user's history")
    parser.add_argument("--users-per-write", type=int, default=defaults.users_per_write,
                        help="users per Redis round trip (default %(default)s)")
    parser.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded Ray)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                        help="Ray Data progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        if args.dataset and args.input:
            raise ValueError("give --dataset or a raw log (--input), not both")
        config = LoadConfig(
            redis=RedisStoreConfig(url=args.redis, key_prefix=args.key_prefix, max_len=args.max_len),
            dataset=args.dataset, source=None if args.dataset else source_from_options(args, SyntheticConfig.seed),
            replace=not args.append, users_per_write=args.users_per_write)
        connect(args.address)
        ray.data.DataContext.get_current().enable_progress_bars = args.progress
        summary = load_histories(config)
    except (InputError, ValueError, FileNotFoundError, HistoryStoreError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"users": summary.users, "behaviors": summary.behaviors, "seconds": round(summary.seconds, 2),
                      "behaviors_per_s": round(summary.behaviors_per_s), "events_read": summary.events_read,
                      "events_rejected": summary.events_rejected}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
