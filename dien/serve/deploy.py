"""Deploying a Serve config to a running cluster, as ``serve deploy`` does, with the checks it leaves out
(``jobs/deploy.py``, the demo).

``serve deploy`` returns once the dashboard has the config: a proxy that cannot bind its port, or an application
that fails to start, shows up later, if someone looks at ``serve status``. Here the HTTP port is set in one place
(``--port``, else ``DIEN_SERVE_PORT`` that ``platform/cluster-up.sh`` exports, else the file's
``http_options.port``), a port that is taken is named before anything is sent, and the deploy is done when every
application is RUNNING, every proxy HEALTHY and each application's own ``/healthz`` answers 200 on that port.
"""
from __future__ import annotations

import copy
import os
import time
from typing import Any, Callable
from urllib.parse import urlparse

import requests

from dien.local_cluster import port_taken

SERVE_PORT_ENV = "DIEN_SERVE_PORT"
DEFAULT_HTTP_PORT = 8000
"""Serve's own default."""
PROXY_UNHEALTHY_GRACE_S = 15.0
"""A proxy is UNHEALTHY for a moment while it starts; longer, and it could not serve the port."""
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


class DeployError(RuntimeError):
    """A deploy that cannot succeed as asked, with what to change."""


def http_port(config: dict[str, Any]) -> int:
    return int((config.get("http_options") or {}).get("port", DEFAULT_HTTP_PORT))


def with_http_port(config: dict[str, Any], port: int | None = None) -> dict[str, Any]:
    """``config`` with its HTTP port from ``port``, else ``DIEN_SERVE_PORT``, else its own."""
    port = port or (int(os.environ[SERVE_PORT_ENV]) if os.environ.get(SERVE_PORT_ENV) else None)
    config = copy.deepcopy(config)
    if port is not None:
        config.setdefault("http_options", {})["port"] = port
    return config


def running_http_port(details: dict[str, Any]) -> int | None:
    """The port Serve's proxies listen on, when Serve runs (GET /api/serve/applications/)."""
    if not details.get("proxies") and not details.get("applications"):
        return None
    return int((details.get("http_options") or {}).get("port", DEFAULT_HTTP_PORT))


def check_http_port(config: dict[str, Any], details: dict[str, Any], dashboard: str) -> None:
    """A :class:`DeployError` when the config's port cannot be served: Serve already listens on another one
    (``http_options`` apply only when Serve starts), or, on this machine, something else holds it."""
    wanted, serving = http_port(config), running_http_port(details)
    if serving is not None and serving != wanted:
        raise DeployError(f"Serve already listens on port {serving}, and http_options apply only when Serve "
                          f"starts: deploy with --port {serving} (or {SERVE_PORT_ENV}={serving}), or run "
                          f"`serve shutdown` first")
    if serving is None and urlparse(dashboard).hostname in LOCAL_HOSTS and port_taken(wanted):
        raise DeployError(f"port {wanted} is taken on this machine by something other than Serve: choose another "
                          f"with --port (or {SERVE_PORT_ENV}), or stop what listens there (ss -ltnp | grep :{wanted})")


def healthz_url(config: dict[str, Any], app: dict[str, Any], dashboard: str) -> str:
    """Where an application's /healthz answers: the cluster's host (as the dashboard URL names it), the port."""
    host = (config.get("http_options") or {}).get("host") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = urlparse(dashboard).hostname or "127.0.0.1"
    prefix = (app.get("route_prefix") or "/").rstrip("/")
    return f"http://{host}:{http_port(config)}{prefix}/healthz"


def failed_deployments(application: dict[str, Any]) -> list[tuple[str, str]]:
    """(deployment, the last line of its message: the exception a replica's constructor raised, e.g. the
    loader's "model artifact not found: ...") for each deployment of an application that failed."""
    failed = []
    for name, deployment in (application.get("deployments") or {}).items():
        if deployment.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
            lines = [line.strip() for line in (deployment.get("message") or "").splitlines() if line.strip()]
            failed.append((name, lines[-1] if lines else deployment.get("status_trigger", "")))
    return failed


def serving_problem(config: dict[str, Any], details: dict[str, Any], dashboard: str,
                    unhealthy_since: dict[str, float]) -> str | None:
    """What the deploy still waits for (None: done); a :class:`DeployError` for what will not come right."""
    now = time.monotonic()
    for node, proxy in (details.get("proxies") or {}).items():
        if proxy.get("status") == "UNHEALTHY":
            since = unhealthy_since.setdefault(node, now)
            if now - since > PROXY_UNHEALTHY_GRACE_S:
                raise DeployError(f"Serve's proxy on node {proxy.get('node_ip', node)} has been UNHEALTHY for "
                                  f"{now - since:.0f} s: it cannot serve port {http_port(config)} (taken?); "
                                  "see `serve status` and the proxy's log under the cluster's logs/serve/")
            return f"proxy on {proxy.get('node_ip', node)} UNHEALTHY"
        unhealthy_since.pop(node, None)
    applications = details.get("applications") or {}
    for app in config["applications"]:
        state = applications.get(app["name"], {})
        status = state.get("status", "not deployed")
        if status == "DEPLOY_FAILED":
            raise DeployError(f"Serve could not deploy {app['name']!r}: {state.get('message', '')}"
                              + "".join(f"\n  {name}: {cause}" for name, cause in failed_deployments(state)))
        if status != "RUNNING":
            return f"{app['name']} {status}"
    for app in config["applications"]:
        url = healthz_url(config, app, dashboard)
        try:
            answer = requests.get(url, timeout=5)
        except requests.RequestException as error:
            return f"{url}: {type(error).__name__}"
        if answer.status_code != 200:
            return f"{url}: {answer.status_code}"
    return None


def deploy(dashboard: str, config: dict[str, Any], timeout_s: float = 300.0,
           progress: Callable[[str], None] = print, progress_every_s: float = 10.0) -> float:
    """Send ``config`` to the cluster whose dashboard is ``dashboard`` and wait until it serves (see the module's
    docstring). Returns the seconds it took; raises :class:`DeployError` or ``TimeoutError``."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)  # Serve's own validation, before anything is sent
    client = ServeSubmissionClient(dashboard)
    check_http_port(config, client.get_serve_details(), dashboard)
    started = last_report = time.monotonic()
    client.deploy_applications(config)
    unhealthy_since: dict[str, float] = {}
    waiting = "the deploy"
    while time.monotonic() - started < timeout_s:
        waiting = serving_problem(config, client.get_serve_details(), dashboard, unhealthy_since)
        if waiting is None:
            return time.monotonic() - started
        if time.monotonic() - last_report >= progress_every_s:
            progress(f"  waiting ({time.monotonic() - started:.0f} s): {waiting}")
            last_report = time.monotonic()
        time.sleep(1.0)
    raise TimeoutError(f"not serving within {timeout_s:.0f} s (last: {waiting}; see `serve status`)")
