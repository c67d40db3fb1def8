"""Checks that changing the served model under load fails no request: a re-deploy onto another artifact, or a
staged rollout of a new version beside the current one (shadow, then promote, then roll back).

Fires score requests from a few threads while ``serve deploy`` applies each new config, until ``GET
/v1/model`` shows the change and a grace period has passed (old replicas drain), then prints what every
request got. Exits 1 if any request failed. ``serve deploy`` runs with this environment: set
``RAY_AUTH_MODE=token`` (token-auth clusters) and ``RAY_DASHBOARD_ADDRESS`` (not on localhost:8265) as for
any ``serve`` command. Afterwards the cluster serves what the last config says: put it in the config file too.

    RAY_AUTH_MODE=token .venv/bin/python -m dien.bench.redeploy_check \\
        --config serve_configs/local.yaml --model "$PWD/artifacts/student-v2" --url http://127.0.0.1:8000
    .venv/bin/python -m dien.bench.redeploy_check --rollout candidate \\
        --config serve_configs/local.yaml --model "$PWD/artifacts/student-v2"

``--rollout LABEL`` serves the new artifact as version ``LABEL`` beside the current one, in three deploys:
shadow (every request answered by the current version, the new one scoring a copy), promote (the split sends
everything to the new one; a ``user_config`` change, no restart) and roll back (everything to the current one
again). The new version stays deployed, unanswered, after the rollback.
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
from typing import Any, Callable

import requests
import yaml

from dien.artifacts import verify_artifact
from dien.serve.config import DEFAULT_VERSION
from dien.serve.ingress import INGRESS
from dien.serve.scorer import scorer_name


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

    def since(self, earlier: "ProbeReport") -> "ProbeReport":
        """What happened after ``earlier`` (a :meth:`snapshot` of this report)."""
        return ProbeReport(self.requests - earlier.requests, self.failures - earlier.failures,
                           self.versions - earlier.versions)

    def snapshot(self) -> "ProbeReport":
        return ProbeReport(self.requests, Counter(self.failures), Counter(self.versions))

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "failed": self.failed, "failures": dict(self.failures),
                "answered_by": dict(self.versions)}


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
                        model = response.json()["model"]
                        ok, outcome = True, f"{model.get('label', DEFAULT_VERSION)}:{model['version']}"
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


def wait_for_model(url: str, shows: Callable[[dict[str, Any]], bool], what: str, timeout_s: float) -> float:
    """Seconds until ``GET {url}/v1/model`` answers what ``shows`` accepts; TimeoutError naming ``what`` after
    ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if shows(requests.get(url.rstrip("/") + "/v1/model", timeout=5).json()):
                return time.monotonic() - started
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not show {what} within {timeout_s:.0f} s")


def wait_for_version(url: str, version: str, timeout_s: float) -> float:
    """Seconds until ``GET {url}/v1/model`` reports ``version`` (of its primary version)."""
    return wait_for_model(url, lambda info: info.get("version") == version, f"model version {version}", timeout_s)


def config_with_model(config: dict[str, Any], model: str, app: str | None = None) -> dict[str, Any]:
    """A copy of a Serve config whose application ``app`` (default: the first) serves ``model``."""
    config = json.loads(json.dumps(config))
    _application(config, app).setdefault("args", {})["model"] = model
    return config


def _application(config: dict[str, Any], app: str | None) -> dict[str, Any]:
    apps = config["applications"]
    target = next((a for a in apps if a["name"] == app), None) if app else apps[0]
    if target is None:
        raise ValueError(f"no application named {app!r} in the config")
    return target


def _deployment(app: dict[str, Any], name: str) -> dict[str, Any]:
    deployments = app.setdefault("deployments", [])
    found = next((d for d in deployments if d["name"] == name), None)
    if found is None:
        found = {"name": name}
        deployments.append(found)
    return found


@dataclass(frozen=True)
class RolloutStep:
    name: str
    config: dict[str, Any]
    """The whole Serve config to deploy."""
    shows: Callable[[dict[str, Any]], bool]
    """Whether a ``GET /v1/model`` answer shows the step applied."""


def rollout_steps(config: dict[str, Any], model: str, label: str, version: str,
                  app: str | None = None) -> list[RolloutStep]:
    """Shadow, promote and roll back the artifact ``model`` (of artifact version ``version``) as version
    ``label`` beside the one application ``app`` answers with now (its first version, or its split's largest)."""
    base = json.loads(json.dumps(config))
    target = _application(base, app)
    current = target.setdefault("args", {}).get("model")
    versions = {DEFAULT_VERSION: current} if isinstance(current, str) else dict(current)
    if label in versions:
        raise ValueError(f"version {label!r} is served already; pick a new label")
    routing = _deployment(target, INGRESS).get("user_config", {}).get("routing", {})
    split = routing.get("split") or {next(iter(versions)): 1}
    answering = max(split, key=split.get)
    target["args"]["model"] = {**versions, label: model}
    scorer = json.loads(json.dumps(_deployment(target, scorer_name(answering))))
    target["deployments"].append({**scorer, "name": scorer_name(label)})

    def with_routing(routing: dict[str, Any]) -> dict[str, Any]:
        step = json.loads(json.dumps(base))
        ingress = _deployment(_application(step, app), INGRESS)
        ingress["user_config"] = {**ingress.get("user_config", {}), "routing": routing}
        return step

    return [
        RolloutStep("shadow", with_routing({"split": {answering: 1}, "shadow": [label]}),
                    lambda info: info["routing"]["shadow"] == [label] and label in info["versions"]),
        RolloutStep("promote", with_routing({"split": {label: 1}}),
                    lambda info: info["routing"]["primary"] == label and info["version"] == version),
        RolloutStep("rollback", with_routing({"split": {answering: 1}}),
                    lambda info: info["routing"]["primary"] == answering and not info["routing"]["shadow"]),
    ]


def run_rollout(url: str, steps: list[RolloutStep], deploy: Callable[[dict[str, Any]], None], probe: "LoadProbe",
                grace_s: float, timeout_s: float) -> list[dict[str, Any]]:
    """Deploy each step under ``probe``'s load, wait until it shows and ``grace_s`` more; what each step's
    requests got, how long it took to show, and the shadow comparisons ``GET /v1/model`` then reports (of the
    ingress replica that answered it; they accumulate over the steps)."""
    phases = []
    for step in steps:
        before = probe.report.snapshot()
        deploy(step.config)
        shown_after = wait_for_model(url, step.shows, f"the {step.name} step", timeout_s)
        time.sleep(grace_s)
        shadows = requests.get(url.rstrip("/") + "/v1/model", timeout=5).json().get("shadow")
        phases.append({"step": step.name, "shown_after_s": round(shown_after, 1),
                       **probe.report.since(before).summary(), "shadow_comparisons": shadows})
    return phases


def serve_deploy(config: dict[str, Any]) -> None:
    """``serve deploy`` of ``config`` with the ``serve`` CLI of this interpreter's environment (RAY_AUTH_MODE and
    RAY_ADDRESS pass through)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(config, file)
        file.flush()
        subprocess.run([str(Path(sys.executable).with_name("serve")), "deploy", file.name], check=True)


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
    parser.add_argument("--rollout", metavar="LABEL",
                        help="serve the artifact as version LABEL beside the current one: shadow, promote, roll back")
    parser.add_argument("--out", help="also write the report here (JSON)")
    args = parser.parse_args(argv)

    version = str(verify_artifact(args.model)["version"])
    config = yaml.safe_load(Path(args.config).read_text())
    model = str(Path(args.model).resolve())
    body = {"user_id": args.user,
            "candidates": [{"item_id": f"probe{i}", "category": "probe"} for i in range(args.candidates)]}
    with LoadProbe(args.url, body, args.threads) as probe:
        time.sleep(1.0)
        if args.rollout:
            phases = run_rollout(args.url, rollout_steps(config, model, args.rollout, version, args.app),
                                 serve_deploy, probe, args.grace, args.timeout)
        else:
            serve_deploy(config_with_model(config, model, args.app))
            phases = [{"step": "redeploy", "shown_after_s": round(wait_for_version(args.url, version, args.timeout), 1)}]
            time.sleep(args.grace)
    report = {**probe.report.summary(), "new_version": version, "steps": phases}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if probe.report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
