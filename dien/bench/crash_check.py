"""Checks that a scorer replica crashing under load costs no request a 500: each request is answered 200 (the
ingress sent it once more, to the replacement) or 503 with ``Retry-After``, and says how long until requests
are answered again.

Deploys ``serve_configs/local.yaml``'s application (Ingress -> Scorer) on an embedded Ray of its own, with
Serve's throughput-optimized mode by default (gRPC between deployments, where a replica's death mid-request
reaches the ingress as an error: 8 of 418 requests got a 500 before the ingress retried), fires score
requests from several threads, kills the scorer replica's process with SIGKILL (as an out-of-memory kill or a
segfault would end it: mid-batch, no goodbye), and waits until the replacement answers. Exits 1 when a
request got anything but 200 or 503.

    .venv/bin/python -m dien.bench.crash_check --model artifacts/student --data data/synthetic
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import ray

from dien.bench.deploy import LocalServe, Variant, load_config, variant_app
from dien.bench.redeploy_check import LoadProbe
from dien.bench.redis_process import free_port
from dien.bench.workload import score_bodies
from dien.serve.proxy_guard import PROXY_ENVIRONMENT
from dien.serve.scorer import SCORER

THROUGHPUT_OPTIMIZED_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
APP = "crash-check"


def replica_processes(app: str, deployment: str) -> list[int]:
    """PIDs of ``app``'s ``deployment`` replicas on this machine (Ray titles an actor's worker process
    ``ray::ServeReplica:<app>:<deployment>``)."""
    title = f"ray::ServeReplica:{app}:{deployment}".encode()
    found = []
    for process in Path("/proc").iterdir():
        try:
            if process.name.isdigit() and title in (process / "cmdline").read_bytes():
                found.append(int(process.name))
        except OSError:
            continue
    return found


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``check`` until it holds; TimeoutError saying ``what`` did not happen within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout_s:.0f} s")
        time.sleep(0.2)


def crash_under_load(model: str, data: str, serve_config: str = "serve_configs/local.yaml", threads: int = 8,
                     candidates: int = 100, timeout_s: float = 120.0) -> dict[str, Any]:
    """Kill the scorer replica under load; what every request got and the recovery time. Runs on a Ray of the
    caller's own, which it shuts down afterwards (Serve's own shutdown waits out the dead replica's drain)."""
    base = load_config(serve_config)
    app = variant_app(base, Variant(APP, model), data)
    serve = LocalServe(port=free_port())
    serve.deploy({**base, "applications": [app]})
    body = json.loads(score_bodies(data, candidates, 1).bodies[0])
    [replica] = replica_processes(APP, SCORER)
    with LoadProbe(serve.url_of(app), body, threads=threads) as probe:
        time.sleep(3.0)
        killed = time.monotonic()
        os.kill(replica, signal.SIGKILL)
        wait_until(lambda: replica_processes(APP, SCORER) not in ([], [replica]), timeout_s,
                   "no replacement scorer replica started")
        answered = probe.report.requests
        wait_until(lambda: probe.report.requests >= answered + 2 * threads, timeout_s,
                   "the replacement answered no requests")
        recovery_s = time.monotonic() - killed
        time.sleep(2.0)
    report = probe.report
    return {"requests": report.requests, "failures": dict(report.failures),
            "failed_not_503": sum(n for kind, n in report.failures.items() if not kind.startswith("HTTP 503")),
            "recovery_s": round(recovery_s, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="artifact directory")
    parser.add_argument("--data", required=True, help="prepared dataset (the store and the requests' users)")
    parser.add_argument("--serve-config", default="serve_configs/local.yaml")
    parser.add_argument("--threads", type=int, default=8, help="requests in flight")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--throughput-optimized", action=argparse.BooleanOptionalAction, default=True,
                        help="Serve's throughput-optimized mode (gRPC between deployments)")
    args = parser.parse_args(argv)
    if args.throughput_optimized:
        os.environ.update(THROUGHPUT_OPTIMIZED_ENV)  # read by the Ray processes started below
    os.environ.update(PROXY_ENVIRONMENT)
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.ERROR)
    try:
        result = crash_under_load(str(Path(args.model).resolve()), str(Path(args.data).resolve()),
                                  args.serve_config, args.threads, args.candidates)
    finally:
        ray.shutdown()
    print(json.dumps({"throughput_optimized": args.throughput_optimized, **result}, indent=2))
    return 1 if result["failed_not_503"] else 0


if __name__ == "__main__":
    sys.exit(main())
