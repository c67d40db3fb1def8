"""Checks that re-deploying a new model under load fails no request.

Fires score requests from a few threads while ``serve deploy`` rolls the application over to another model
artifact, until ``GET /v1/model`` reports the new version and a grace period has passed (old replicas
drain), then prints what every request got. Exits 1 if any request failed. ``serve deploy`` runs with this
environment: set ``RAY_AUTH_MODE=token`` (token-auth clusters) and ``RAY_DASHBOARD_ADDRESS`` (not on
localhost:8265) as for any ``serve`` command. Afterwards the cluster serves the new model: put its path
in the config file too.

    RAY_AUTH_MODE=token .venv/bin/python -m dien.bench.redeploy_check \\
        --config serve_configs/local.yaml --model "$PWD/artifacts/student-v2" --url http://127.0.0.1:8000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from dien.artifacts import verify_artifact


@dataclass
class ProbeReport:
    requests: int = 0
    failures: Counter = field(default_factory=Counter)
    """Failure kind (HTTP status or exception type) -> count."""
    versions: Counter = field(default_factory=Counter)
    """Model version that answered -> count."""

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


class LoadProbe:
    """Threads that POST ``body`` to ``{url}/v1/score`` back to back until stopped, counting the outcomes."""

    def __init__(self, url: str, body: dict[str, Any], threads: int = 4, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/") + "/v1/score"
        self.body = body
        self.timeout_s = timeout_s
        self.report = ProbeReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    response = session.post(self.url, json=self.body, timeout=self.timeout_s)
                    if response.status_code == 200:
                        ok, outcome = True, str(response.json()["model"]["version"])
                    else:
                        ok, outcome = False, f"HTTP {response.status_code}: {response.text[:200]}"
                except (requests.RequestException, ValueError, KeyError) as error:
                    ok, outcome = False, f"{type(error).__name__}: {error}"
                with self._lock:
                    self.report.requests += 1
                    (self.report.versions if ok else self.report.failures)[outcome] += 1

    def __enter__(self) -> "LoadProbe":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def wait_for_version(url: str, version: str, timeout_s: float) -> float:
    """Seconds until ``GET {url}/v1/model`` reports ``version``; TimeoutError after ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if requests.get(url.rstrip("/") + "/v1/model", timeout=5).json().get("version") == version:
                return time.monotonic() - started
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not report model version {version} within {timeout_s:.0f} s")


def config_with_model(config: dict[str, Any], model: str, app: str | None = None) -> dict[str, Any]:
    """A copy of a Serve config whose application ``app`` (default: the first) serves ``model``."""
    config = json.loads(json.dumps(config))
    apps = config["applications"]
    target = next((a for a in apps if a["name"] == app), None) if app else apps[0]
    if target is None:
        raise ValueError(f"no application named {app!r} in the config")
    target.setdefault("args", {})["model"] = model
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the Serve config the cluster runs now")
    parser.add_argument("--model", required=True, help="the artifact directory to roll over to (absolute)")
    parser.add_argument("--app", default=None, help="application name in the config (default: the first)")
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--user", default="u1", help="user_id of the probe requests")
    parser.add_argument("--candidates", type=int, default=10, help="candidates per probe request")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--grace", type=float, default=10.0, help="seconds to keep probing after the switch")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the new version")
    args = parser.parse_args(argv)

    version = str(verify_artifact(args.model)["version"])
    config = config_with_model(yaml.safe_load(Path(args.config).read_text()), str(Path(args.model).resolve()),
                               args.app)
    body = {"user_id": args.user,
            "candidates": [{"item_id": f"probe{i}", "category": "probe"} for i in range(args.candidates)]}
    with LoadProbe(args.url, body, args.threads) as probe, tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        time.sleep(1.0)
        yaml.safe_dump(config, file)
        file.flush()
        # The `serve` CLI of this interpreter's environment (RAY_AUTH_MODE and RAY_ADDRESS pass through).
        subprocess.run([str(Path(sys.executable).with_name("serve")), "deploy", file.name], check=True)
        switched_after = wait_for_version(args.url, version, args.timeout)
        time.sleep(args.grace)
    report = probe.report
    print(json.dumps({"requests": report.requests, "failed": report.failed, "failures": dict(report.failures),
                      "versions": dict(report.versions), "new_version": version,
                      "switched_after_s": round(switched_after, 1)}, indent=2))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
