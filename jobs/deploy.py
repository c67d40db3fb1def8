"""Deploy a Serve config to a running cluster and wait until it serves (``dien.serve.deploy``): ``serve deploy``
with the port set in one place and the checks it leaves out (a taken port, a proxy that cannot bind it, an
application that fails, its /healthz).

    source runs/cluster/env                            # RAY_ADDRESS, RAY_AUTH_MODE, DIEN_SERVE_PORT
    python jobs/deploy.py serve_configs/local.yaml
    python jobs/deploy.py serve_configs/local.yaml --port 8100

Relative paths in the config's ``args`` resolve against the directory the cluster was started in (the
repository root for ``make cluster-up``), as with ``serve deploy``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import requests
import yaml

from dien.serve.deploy import SERVE_PORT_ENV, DeployError, deploy, healthz_url, http_port, with_http_port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="a Serve config file (serve_configs/*.yaml)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"Serve's HTTP port (default: ${SERVE_PORT_ENV}, else the config's http_options.port)")
    parser.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS") or os.environ.get("RAY_ADDRESS"),
                        help="the cluster's dashboard URL (default: $RAY_DASHBOARD_ADDRESS, else $RAY_ADDRESS)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait until it serves")
    args = parser.parse_args()
    if not args.address or not args.address.startswith(("http://", "https://")):
        parser.error(f"--address must be the cluster's dashboard URL (http://host:8265), got {args.address!r}; "
                     "`source runs/cluster/env` sets it for the cluster of make cluster-up")
    if not args.config.is_file():
        parser.error(f"config file not found: {args.config}")
    config = with_http_port(yaml.safe_load(args.config.read_text()), args.port)
    print(f"deploying {args.config} to {args.address}, HTTP port {http_port(config)}", flush=True)
    try:
        seconds = deploy(args.address, config, args.timeout)
    except (DeployError, TimeoutError, ValueError, ConnectionError, requests.RequestException) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for app in config["applications"]:
        print(f"serving {app['name']}: {healthz_url(config, app, args.address)} answers 200 ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
