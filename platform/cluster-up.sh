#!/usr/bin/env bash
# Start a local Ray head from the project's virtualenv, with the dashboard and token authentication on.
#
#   make cluster-up                        # or: NUM_CPUS=8 platform/cluster-up.sh
#   source runs/cluster/env                # RAY_ADDRESS (dashboard, for `ray job submit` / `serve deploy`), RAY_AUTH_MODE
#   make cluster-down
#
# Started from the repository root, so relative paths in serve_configs/*.yaml resolve there, and with the
# virtualenv's interpreter, so every worker and replica imports `dien` from it. The cluster keeps its files
# under its own temp dir (RAY_TEMP_DIR, default /tmp/ray-dien): cluster-down.sh stops exactly the processes
# of this cluster (`ray stop` would stop every Ray on the machine, other people's embedded ones included).
#
# Settings (environment): NUM_CPUS (4), RAY_PORT (6379, GCS), DASHBOARD_PORT (8265), AGENT_PORT (52375, the
# dashboard agent's HTTP port, through which `ray job submit` reaches the head), RAY_TEMP_DIR, VENV (.venv).
# Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
[[ "$VENV" = /* ]] || VENV="$PWD/$VENV"
NUM_CPUS=${NUM_CPUS:-4}
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
# Not Ray's default 52365: an embedded ray.init() on the same machine holds that one, and an agent that cannot
# bind it leaves the cluster up but refusing every job ("No available agent to submit job").
AGENT_PORT=${AGENT_PORT:-52375}
RAY_TEMP_DIR=${RAY_TEMP_DIR:-/tmp/ray-dien}
STATE_DIR=runs/cluster
RAY="$VENV/bin/ray"

if [[ ! -x "$RAY" ]]; then
    echo "error: $RAY not found: run 'make setup' first" >&2
    exit 2
fi
if pgrep -f -- "--temp-dir=$RAY_TEMP_DIR" >/dev/null 2>&1; then
    echo "error: a cluster is already running with temp dir $RAY_TEMP_DIR; 'make cluster-down' first" >&2
    exit 2
fi

# Token authentication: Ray 2.60 reads the token from ~/.ray/auth_token (made here if missing) and enforces it
# on every RPC and dashboard request when RAY_AUTH_MODE=token; clients need RAY_AUTH_MODE=token and the token file.
"$RAY" get-auth-token --generate >/dev/null
export RAY_AUTH_MODE=token
export PATH="$VENV/bin:$PATH"
# Serve's proxies run the request guard (dien/serve/proxy_guard.py: body deadline, header and concurrency limits;
# DIEN_PROXY_* variables set them).
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=dien.serve.proxy_guard:proxy_middlewares

mkdir -p "$STATE_DIR"
"$RAY" start --head \
    --node-ip-address=127.0.0.1 --port="$RAY_PORT" --num-cpus="$NUM_CPUS" \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --dashboard-agent-listen-port="$AGENT_PORT" \
    --temp-dir="$RAY_TEMP_DIR" --disable-usage-stats >"$STATE_DIR/start.log" 2>&1 || {
    echo "error: ray start failed:" >&2
    tail -n 30 "$STATE_DIR/start.log" >&2
    exit 1
}

cat >"$STATE_DIR/env" <<ENV
# Written by platform/cluster-up.sh: what a client of the local cluster needs (source this file).
export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_DASHBOARD_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_GCS_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_AUTH_MODE=token
export RAY_TEMP_DIR=$RAY_TEMP_DIR
ENV

for _ in $(seq 60); do   # the dashboard answers a moment after `ray start` returns (this path needs no token)
    curl -fs -o /dev/null "http://127.0.0.1:$DASHBOARD_PORT/api/gcs_healthz" && break
    sleep 1
done

cat <<INFO
Ray cluster up: $NUM_CPUS CPUs, token authentication on, temp dir $RAY_TEMP_DIR
  GCS address        127.0.0.1:$RAY_PORT         (ray.init(address="127.0.0.1:$RAY_PORT"), ray status --address ...)
  dashboard          http://127.0.0.1:$DASHBOARD_PORT   (ray job submit, serve deploy, the web UI)
  auth token         ~/.ray/auth_token (ray get-auth-token prints it; RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH also work)
  Serve HTTP         http://127.0.0.1:8000 once an application is deployed

Client environment (also in $STATE_DIR/env: source it):
  export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RAY_AUTH_MODE=token

Examples:
  $VENV/bin/ray job submit -- "$VENV/bin/python" "$PWD/jobs/prepare_data.py" --out "$PWD/data/synthetic"
  $VENV/bin/serve deploy serve_configs/local.yaml && $VENV/bin/serve status
  make cluster-down
INFO
