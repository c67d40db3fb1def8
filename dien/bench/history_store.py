"""The user-history stores under load (``jobs/bench_history.py``): the bulk load's behaviors/s into Redis,
``POST /v1/events``' events/s, and scoring with the Redis store against the snapshot store.

Both stores serve the same student from the same Serve config (``serve_configs/local.yaml``), side by side on
one embedded Ray, each under its own route prefix; the Redis one reads the histories the bulk load wrote from
the same dataset, so both score the same histories. The scoring requests carry only ``user_id`` (the ingress
looks the history up, the work that differs), and every round measures the two one after the other, so a
drifting background load shifts both alike; the ratio is taken per round.
"""
from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import requests

from dien.bench.deploy import LocalServe, Variant, load_config, variant_app
from dien.bench.load import LoadResult, LoadSettings, measure
from dien.bench.qps import Inputs, prepare_inputs
from dien.bench.redis_process import RedisProcess, free_port
from dien.bench.request_path import repeat_request_cost
from dien.bench.workload import Workload, event_bodies, score_bodies
from dien.cluster import default_local_cpus
from dien.serve.config import RedisStoreConfig
from dien.serve.history_load import LoadConfig, LoadSummary, load_histories
from dien.serve.proxy_guard import PROXY_ENVIRONMENT

logger = logging.getLogger(__name__)

SNAPSHOT, REDIS = "snapshot store", "redis store"
CACHE_CANDIDATES = (1, 100)
"""Request sizes the history cache's saving is measured at."""


@dataclass(frozen=True)
class HistoryBenchConfig:
    inputs: Inputs = Inputs()
    serve_config: str = "serve_configs/local.yaml"
    redis: str | None = None
    """A Redis to use (its keys under ``key_prefix`` are replaced); None: a redis-server started on a free port."""
    key_prefix: str = "dien-bench"
    bulk_data: str | None = None
    """A prepared dataset whose histories the bulk load is timed on (default: ``inputs.data``, whose histories
    the Redis store then serves); a larger one shows the job's rate past its fixed start-up cost."""
    candidates: int = 100
    concurrency: int = 16
    """Scoring requests in flight (closed loop)."""
    events_per_request: int = 100
    event_concurrency: int = 8
    rounds: int = 3
    load: LoadSettings = LoadSettings()
    bodies: int = 512
    out: str = "runs/bench_history"


@dataclass
class HistoryBenchReport:
    config: dict[str, Any]
    environment: dict[str, Any]
    bulk: dict[str, float] = field(default_factory=dict)
    scoring: list[dict[str, Any]] = field(default_factory=list)
    """Per round and store: the closed-loop measurement."""
    events: list[dict[str, Any]] = field(default_factory=list)
    cache: dict[str, dict[str, float]] = field(default_factory=dict)
    """Candidates per request -> :func:`dien.bench.request_path.repeat_request_cost`."""
    summary: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _bulk_figures(summary: LoadSummary) -> dict[str, float]:
    return {"users": summary.users, "behaviors": summary.behaviors, "seconds": round(summary.seconds, 2),
            "behaviors_per_s": round(summary.behaviors_per_s)}


def _store_apps(config: HistoryBenchConfig, data: Path, student: Path, redis_url: str) -> dict[str, dict[str, Any]]:
    base = load_config(config.serve_config)
    apps = {name: variant_app(base, Variant(name, str(student)), data) for name in (SNAPSHOT, REDIS)}
    apps[REDIS]["args"]["history"] = {"store": "redis", "url": redis_url, "key_prefix": config.key_prefix}
    return apps


def _row(store: str, round_: int, result: LoadResult) -> dict[str, Any]:
    return {"store": store, "round": round_, **result.as_dict()}


def run(config: HistoryBenchConfig) -> HistoryBenchReport:
    """Measure everything on an embedded Ray (and a redis-server of its own unless ``config.redis``)."""
    started = time.monotonic()
    report = HistoryBenchReport(config=asdict(config), environment={
        "cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]})
    with tempfile.TemporaryDirectory(prefix="dien-redis-") as scratch:
        redis_process = None if config.redis else RedisProcess(Path(scratch))
        redis_url = config.redis or redis_process.url
        os.environ.update(PROXY_ENVIRONMENT)  # Serve's proxy as it is shipped, with the request guard
        ray.init(address="local", num_cpus=default_local_cpus(), include_dashboard=False,
                 logging_level=logging.WARNING)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            data, student, _ = prepare_inputs(config.inputs)
            for candidates in CACHE_CANDIDATES:
                report.cache[str(candidates)] = repeat_request_cost(student, data, score_bodies(data, candidates, 64))
            logger.info("repeat requests, scoring ms with and without the history cache: %s", report.cache)
            store = RedisStoreConfig(url=redis_url, key_prefix=config.key_prefix)
            if config.bulk_data is not None:
                report.bulk = _bulk_figures(load_histories(LoadConfig(
                    redis=store.model_copy(update={"key_prefix": f"{config.key_prefix}-bulk"}),
                    dataset=config.bulk_data)))
            served = _bulk_figures(load_histories(LoadConfig(redis=store, dataset=str(data))))
            report.bulk = report.bulk or served
            logger.info("bulk load: %s", report.bulk)
            _measure_serving(config, report, data, student, redis_url)
        finally:
            ray.shutdown()
            if redis_process is not None:
                redis_process.stop()
    report.seconds = time.monotonic() - started
    return report


def _measure_serving(config: HistoryBenchConfig, report: HistoryBenchReport, data: Path, student: Path,
                     redis_url: str) -> None:
    serve = LocalServe(port=free_port())
    try:
        apps = _store_apps(config, data, student, redis_url)
        serve.deploy({**load_config(config.serve_config), "applications": list(apps.values())})
        urls = {name: serve.url_of(app) for name, app in apps.items()}
        scoring = score_bodies(data, config.candidates, config.bodies, inline_history=False)
        for url in urls.values():
            _check(url, scoring)
        ratios = []
        for round_ in range(config.rounds):
            measured = {name: measure(url, scoring, config.load, concurrency=config.concurrency)
                        for name, url in urls.items()}
            report.scoring += [_row(name, round_, result) for name, result in measured.items()]
            ratios.append(measured[REDIS].candidates_per_s / measured[SNAPSHOT].candidates_per_s)
            logger.info("round %d: %s", round_, {n: round(r.candidates_per_s) for n, r in measured.items()})
        events = event_bodies(data, config.events_per_request, config.bodies)
        _check(urls[REDIS], events)
        for round_ in range(config.rounds):
            result = measure(urls[REDIS], events, config.load, concurrency=config.event_concurrency)
            report.events.append(_row(REDIS, round_, result))
        best = {name: max(r["candidates_per_s"] for r in report.scoring if r["store"] == name) for name in urls}
        report.summary = {
            "bulk_behaviors_per_s": report.bulk["behaviors_per_s"],
            "events_per_s_best": round(max(r["candidates_per_s"] for r in report.events)),
            "snapshot_candidates_per_s_best": round(best[SNAPSHOT]),
            "redis_candidates_per_s_best": round(best[REDIS]),
            "redis_over_snapshot_median_of_rounds": round(statistics.median(ratios), 3),
            "redis_over_snapshot_per_round": [round(r, 3) for r in ratios],
            "failed_requests": sum(r["errors"] for r in report.scoring + report.events),
        }
    finally:
        serve.close()


def _check(url: str, workload: Workload) -> None:
    """One request of ``workload`` answered with 200 before anything is measured."""
    answer = requests.post(url + workload.path, data=workload.bodies[0], headers={"Content-Type": "application/json"},
                           timeout=120)
    if answer.status_code != 200:
        raise RuntimeError(f"{url}{workload.path} answered {answer.status_code}: {answer.text[:300]}")


def format_report(report: HistoryBenchReport) -> str:
    lines = [f"bulk load: {report.bulk['behaviors']:,} behaviors of {report.bulk['users']:,} users in "
             f"{report.bulk['seconds']:.1f} s = {report.bulk['behaviors_per_s']:,.0f} behaviors/s", "",
             f"{'what':<28} {'round':>5} {'req/s':>8} {'items/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"]
    for row in report.scoring + report.events:
        what = f"{row['store']}, {'score' if row in report.scoring else 'events'}"
        lines.append(f"{what:<28} {row['round']:>5} {row['requests_per_s']:>8.1f} {row['candidates_per_s']:>9.0f} "
                     f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['errors']:>6}")
    lines += ["", "items/s: candidates/s for scoring, events/s for events", "",
              "repeat request of a user, scoring ms per request (one thread), history recomputed vs cached:",
              *(f"  {n} candidates: " + ", ".join(f"{k} {v}" for k, v in cost.items())
                for n, cost in report.cache.items()), "",
              *(f"{k}: {v}" for k, v in report.summary.items())]
    return "\n".join(lines)
