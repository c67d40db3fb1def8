"""Checks that the Redis history store going down under load costs no request a 500: while it is down, score
requests that name a stored user get 503 naming the store (with ``Retry-After``), and once it is back they are
answered 200 again, with the histories it held before the crash (append-only file, fsync on every write).

Starts a ``redis-server`` of its own with persistence on, bulk-loads the dataset's histories into it, deploys
``serve_configs/local.yaml``'s application reading that store on an embedded Ray, fires score requests from
several threads, kills the server with SIGKILL, restarts it on the same files, and counts what every request
got before, during and after. Exits 1 when a request got anything but 200 or 503.

    .venv/bin/python -m dien.bench.store_outage_check --model artifacts/student --data data/synthetic
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import requests

from dien.bench.crash_check import wait_until
from dien.bench.deploy import LocalServe, Variant, load_config, variant_app
from dien.bench.redeploy_check import LoadProbe, ProbeReport
from dien.bench.redis_process import RedisProcess, free_port
from dien.bench.workload import score_bodies
from dien.serve.config import RedisStoreConfig
from dien.serve.history_load import LoadConfig, load_histories
from dien.serve.proxy_guard import PROXY_ENVIRONMENT

APP = "store-outage-check"


def _counts(report: ProbeReport) -> dict[str, int]:
    """Requests answered 200, answered 503, and anything else."""
    unavailable = sum(n for kind, n in report.failures.items() if kind.startswith("HTTP 503"))
    return {"requests": report.requests, "ok": report.requests - report.failed, "unavailable_503": unavailable,
            "other_failures": report.failed - unavailable}


def outage_under_load(model: str, data: str, serve_config: str = "serve_configs/local.yaml", threads: int = 8,
                      candidates: int = 100, down_s: float = 5.0, timeout_s: float = 120.0) -> dict[str, Any]:
    """Kill and restart the store under load; what requests got in each phase and how long recovery took.
    Runs on a Ray of the caller's own."""
    with tempfile.TemporaryDirectory(prefix="dien-store-outage-") as directory:
        store = RedisProcess(Path(directory), append_only=True)
        try:
            load_histories(LoadConfig(redis=RedisStoreConfig(url=store.url), dataset=data))
            base = load_config(serve_config)
            app = variant_app(base, Variant(APP, model), data)
            app["args"]["history"] = {"store": "redis", "url": store.url, "timeout_s": 0.5}
            serve = LocalServe(port=free_port())
            serve.deploy({**base, "applications": [app]})
            url = serve.url_of(app)
            body = json.loads(score_bodies(data, candidates, 1).bodies[0])
            with LoadProbe(url, body, threads=threads) as probe:
                time.sleep(3.0)
                before = probe.report.snapshot()
                store.stop(kill=True)
                time.sleep(down_s)
                during = probe.report.snapshot()
                store.start()
                restarted = time.monotonic()
                wait_until(lambda: probe.report.requests - probe.report.failed
                           >= during.requests - during.failed + 2 * threads, timeout_s,
                           "no request was answered after the store came back")
                recovery_s = time.monotonic() - restarted
                time.sleep(2.0)
            after = probe.report.snapshot()
            answer = requests.post(f"{url}/v1/score", json=body, timeout=60).json()
        finally:
            store.stop()
    return {"before": _counts(before), "while_down": _counts(during.since(before)),
            "after_restart": _counts(after.since(during)), "recovery_s": round(recovery_s, 2),
            "history_length_after": answer.get("history_length"),
            "failure_kinds": sorted({kind[:120] for kind in after.failures})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="artifact directory")
    parser.add_argument("--data", required=True, help="prepared dataset (the histories and the requests' users)")
    parser.add_argument("--serve-config", default="serve_configs/local.yaml")
    parser.add_argument("--threads", type=int, default=8, help="requests in flight")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--down", type=float, default=5.0, help="seconds the store stays down")
    parser.add_argument("--out", default="runs/store_outage_check.json")
    args = parser.parse_args(argv)
    os.environ.update(PROXY_ENVIRONMENT)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.ERROR)
    try:
        result = outage_under_load(str(Path(args.model).resolve()), str(Path(args.data).resolve()),
                                   args.serve_config, args.threads, args.candidates, args.down)
    finally:
        ray.shutdown()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 1 if sum(phase["other_failures"] for phase in
                    (result["before"], result["while_down"], result["after_restart"])) else 0


if __name__ == "__main__":
    sys.exit(main())
