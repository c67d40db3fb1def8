"""Deploying the benchmark's variants of a Serve config side by side on the connected Ray, as ``serve deploy``
does.

A variant is the application of ``serve_configs/local.yaml`` (or another config of this project) with its
model and history paths replaced and, optionally, the scorer's ``user_config`` and environment changed
(e.g. batching off, ``DIEN_KERNEL=reference``); or the no-op application (:mod:`dien.bench.noop`) with the
same ingress deployment, the ceiling for the same requests. All variants run at once, each as its own
application under its own route prefix, so that measurements of different variants can alternate: a
machine whose background load drifts over minutes then biases none of them.
"""
from __future__ import annotations

import copy
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml
from ray import serve
from ray.serve.schema import ApplicationStatus, ServeDeploySchema

from dien.serve.ingress import INGRESS
from dien.serve.scorer import SCORER

NOOP_IMPORT_PATH = "dien.bench.noop:build_noop_app"


@dataclass(frozen=True)
class Variant:
    """One application under test."""

    name: str
    """Its label in the report."""
    model: str | None
    """Model artifact directory; None: the no-op application."""
    user_config: dict[str, Any] = field(default_factory=dict)
    """Scorer ``user_config`` fields that replace the config file's."""
    forwarding: dict[str, Any] = field(default_factory=dict)
    """Ingress ``user_config.forwarding`` fields (``ForwardingConfig``) that replace the config file's."""
    scorer_env: dict[str, str] = field(default_factory=dict)
    """Environment variables of the scorer replicas (``runtime_env.env_vars``)."""
    in_ingress: bool = False
    """``scoring: in_ingress``: no Scorer deployment; the Ingress takes the Scorer's CPUs and ``user_config``."""
    replicas: int | None = None
    """Replicas of the scoring deployment (the Scorer, or the Ingress with ``in_ingress``); None: the file's."""

    @property
    def is_noop(self) -> bool:
        return self.model is None

    @property
    def app(self) -> str:
        """Its Serve application name, also its route prefix (``/<app>``)."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def load_config(path: str | Path) -> dict[str, Any]:
    """A Serve config file as a dict (validated against Serve's schema); one application expected."""
    raw = yaml.safe_load(Path(path).read_text())
    ServeDeploySchema.model_validate(raw)
    if len(raw["applications"]) != 1:
        raise ValueError(f"{path}: expected one application, found {len(raw['applications'])}")
    return raw


def _deployment(app: dict[str, Any], name: str) -> dict[str, Any]:
    found = next((d for d in app.get("deployments", []) if d["name"] == name), None)
    if found is None:
        raise ValueError(f"the config's application {app['name']!r} has no deployment named {name!r}")
    return found


def variant_app(base: dict[str, Any], variant: Variant, history: str | Path) -> dict[str, Any]:
    """The application of ``base`` (a config dict, unchanged) as deployed for ``variant``: named and routed
    ``/<variant.app>``, absolute paths."""
    app = copy.deepcopy(base["applications"][0])
    app.update(name=variant.app, route_prefix=f"/{variant.app}")
    if variant.is_noop:
        app["import_path"] = NOOP_IMPORT_PATH
        app["args"] = {"limits": app.get("args", {}).get("limits", {})}
        # The no-op ingress forwards nothing: the Ingress's user_config (forwarding to a Scorer) is not its own.
        app["deployments"] = [{k: v for k, v in _deployment(app, INGRESS).items() if k != "user_config"}]
        return app
    app["args"] = {**app.get("args", {}), "model": str(Path(variant.model).resolve()),
                   "history": str(Path(history).resolve())}
    scorer = _deployment(app, SCORER)
    scorer["user_config"] = {**scorer.get("user_config", {}), **variant.user_config}
    batch = scorer["user_config"].get("max_batch_size")
    if batch is not None and scorer.get("max_ongoing_requests", batch) < batch:
        scorer["max_ongoing_requests"] = batch  # Serve warns otherwise, and a batch could never fill
    if variant.forwarding:
        ingress = _deployment(app, INGRESS)
        ingress_config = ingress.setdefault("user_config", {})
        ingress_config["forwarding"] = {**ingress_config.get("forwarding", {}), **variant.forwarding}
    if variant.in_ingress:
        ingress = _deployment(app, INGRESS)
        ingress["user_config"] = scorer["user_config"]
        ingress["ray_actor_options"] = {**ingress.get("ray_actor_options", {}),
                                        "num_cpus": scorer.get("ray_actor_options", {}).get("num_cpus", 1)}
        app["args"]["scoring"] = "in_ingress"
        app["deployments"] = [ingress]
        scorer = ingress
    if variant.replicas is not None:
        scorer["num_replicas"] = variant.replicas
    if variant.scorer_env:
        options = scorer.setdefault("ray_actor_options", {})
        runtime_env = options.setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **variant.scorer_env}
    return app


def variants_config(base: dict[str, Any], variants: list[Variant], history: str | Path) -> dict[str, Any]:
    """``base`` with one application per variant (its cluster-wide settings unchanged)."""
    if len({v.app for v in variants}) != len(variants):
        raise ValueError(f"variant names must differ: {[v.name for v in variants]}")
    return {**copy.deepcopy(base), "applications": [variant_app(base, v, history) for v in variants]}


def logical_cpus(config: dict[str, Any]) -> float:
    """Logical CPUs the config's replicas request (``num_cpus`` x ``num_replicas``; autoscaled: its minimum)."""
    total = 0.0
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            replicas = deployment.get("num_replicas", 1)
            if not isinstance(replicas, int):
                replicas = deployment.get("autoscaling_config", {}).get("min_replicas", 1)
            total += replicas * deployment.get("ray_actor_options", {}).get("num_cpus", 1)
    return total


class LocalServe:
    """Serve on the connected Ray, HTTP on ``host:port`` (on every node, or ``proxy_location="HeadOnly"``);
    :meth:`deploy` applies configs, :meth:`close` shuts Serve down (its applications, controller and proxies)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, proxy_location: str = "EveryNode") -> None:
        self.url = f"http://{host}:{port}"
        serve.start(proxy_location=proxy_location, http_options={"host": host, "port": port})
        # What `serve deploy` reaches through the dashboard; an embedded Ray has no dashboard.
        self._client = serve.context._get_global_client()

    def url_of(self, app: dict[str, Any]) -> str:
        return self.url + app.get("route_prefix", "/").rstrip("/")

    def deploy(self, config: dict[str, Any], timeout_s: float = 300.0) -> None:
        """Apply ``config`` and wait until every application runs and answers, DIEN ones with their scorer
        settings (a ``user_config`` change reaches running replicas a moment after the deploy returns)."""
        self._client.deploy_apps(ServeDeploySchema.model_validate(config))
        deadline = time.monotonic() + timeout_s
        for app in config["applications"]:
            self._wait_running(app["name"], deadline)
            is_dien = any(d["name"] == SCORER for d in app.get("deployments", []))
            wanted = _deployment(app, SCORER).get("user_config", {}) if is_dien else {}
            while not self._serves(self.url_of(app), wanted, is_dien):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.url_of(app)} did not answer with scorer settings {wanted} "
                                       f"within {timeout_s:.0f} s")
                time.sleep(0.5)

    @staticmethod
    def _wait_running(name: str, deadline: float) -> None:
        while True:
            status = serve.status().applications.get(name)
            if status is not None and status.status == ApplicationStatus.RUNNING:
                return
            if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
                raise RuntimeError(f"deploying application {name!r} failed: {status.message}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"application {name!r} not running after the deadline: "
                                   f"{status.status if status else 'not found'}")
            time.sleep(0.5)

    @staticmethod
    def _serves(url: str, user_config: dict[str, Any], is_dien: bool) -> bool:
        try:
            if not is_dien:
                return requests.get(f"{url}/healthz", timeout=5).status_code == 200
            serving = requests.get(f"{url}/v1/model", timeout=5).json()["serving"]
        except (requests.RequestException, ValueError, KeyError):
            return False
        return all(serving.get(k) == v for k, v in user_config.items())

    def close(self) -> None:
        serve.shutdown()
