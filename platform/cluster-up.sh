#!/usr/bin/env bash
# Start a local Ray head from the project's virtualenv, with the dashboard and token authentication on.
#
#   make cluster-up                        # or: NUM_CPUS=8 platform/cluster-up.sh
#   source runs/cluster/env                # RAY_ADDRESS (dashboard, for `ray job submit` / `serve deploy`), RAY_AUTH_MODE
#   make cluster-down
#
# Started from the repository root, so relative paths in serve_configs/*.yaml resolve there, and with the
# virtualenv's interpreter, so every worker and replica imports `dien` from it. `ray start` runs in a session of
# its own (setsid), which runs/cluster/state.json names with the temp dir and the ports: cluster-down.sh stops
# exactly the processes of this cluster (`ray stop` would stop every Ray on the machine, other people's embedded ones
# included).
#
# Settings (environment), each a port checked free before anything starts: RAY_PORT (6379, GCS), DASHBOARD_PORT
# (8265), AGENT_PORT (52375, the dashboard agent's HTTP port, through which `ray job submit` reaches the head),
# CLIENT_PORT (10001, the Ray client server, which `ray start` always runs), SERVE_PORT (8000, what
# jobs/deploy.py gives Serve's HTTP proxy), DASHBOARD_METRIC_PORT (44227) and AUTOSCALER_METRIC_PORT (44217,
# Prometheus endpoints). Also NUM_CPUS (4), RAY_TEMP_DIR (/tmp/ray-dien), VENV (.venv).
#
# Everything listens on the loopback: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray takes 127.0.0.1 as this node's
# address (`--node-ip-address=127.0.0.1` alone is replaced by the machine's address) and binds its servers,
# agents and metrics endpoints there; clients that join through the GCS address need the same variable
# (runs/cluster/env exports it). What listens where is printed once the cluster is up.
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
CLIENT_PORT=${CLIENT_PORT:-10001}
SERVE_PORT=${SERVE_PORT:-8000}
export DASHBOARD_METRIC_PORT=${DASHBOARD_METRIC_PORT:-44227} AUTOSCALER_METRIC_PORT=${AUTOSCALER_METRIC_PORT:-44217}
RAY_TEMP_DIR=${RAY_TEMP_DIR:-/tmp/ray-dien}
STATE_DIR=${STATE_DIR:-runs/cluster}
STATE="$STATE_DIR/state.json"
RAY="$VENV/bin/ray"
CLUSTER=("$VENV/bin/python" -m dien.local_cluster)

if [[ ! -x "$RAY" ]]; then
    echo "error: $RAY not found: run 'make setup' first" >&2
    exit 2
fi
if "${CLUSTER[@]}" running --state "$STATE" >/dev/null; then
    echo "error: the cluster of $STATE is running; 'make cluster-down' first" >&2
    exit 2
fi
"${CLUSTER[@]}" check-ports RAY_PORT="$RAY_PORT" DASHBOARD_PORT="$DASHBOARD_PORT" AGENT_PORT="$AGENT_PORT" \
    CLIENT_PORT="$CLIENT_PORT" SERVE_PORT="$SERVE_PORT" DASHBOARD_METRIC_PORT="$DASHBOARD_METRIC_PORT" \
    AUTOSCALER_METRIC_PORT="$AUTOSCALER_METRIC_PORT" || exit 2

# Token authentication: Ray 2.60 reads the token from ~/.ray/auth_token (made here if missing) and enforces it
# on every RPC and dashboard request when RAY_AUTH_MODE=token; clients need RAY_AUTH_MODE=token and the token file.
"$RAY" get-auth-token --generate >/dev/null
export RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export PATH="$VENV/bin:$PATH"
# Serve's proxies run the request guard (dien/serve/proxy_guard.py: body deadline, header and concurrency limits;
# DIEN_PROXY_* variables set them).
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=dien.serve.proxy_guard:proxy_middlewares

mkdir -p "$STATE_DIR"
started=$(date +%s.%N)
status=0
setsid --wait "$RAY" start --head \
    --port="$RAY_PORT" --num-cpus="$NUM_CPUS" \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --dashboard-agent-listen-port="$AGENT_PORT" --ray-client-server-port="$CLIENT_PORT" \
    --temp-dir="$RAY_TEMP_DIR" --disable-usage-stats >"$STATE_DIR/start.log" 2>&1 || status=$?
"${CLUSTER[@]}" record --state "$STATE" --started "$started" --temp-dir "$RAY_TEMP_DIR" \
    RAY_PORT="$RAY_PORT" DASHBOARD_PORT="$DASHBOARD_PORT" AGENT_PORT="$AGENT_PORT" CLIENT_PORT="$CLIENT_PORT" \
    SERVE_PORT="$SERVE_PORT" DASHBOARD_METRIC_PORT="$DASHBOARD_METRIC_PORT" \
    AUTOSCALER_METRIC_PORT="$AUTOSCALER_METRIC_PORT" || status=1
if [[ $status != 0 ]]; then
    echo "error: ray start failed:" >&2
    tail -n 30 "$STATE_DIR/start.log" >&2
    "${CLUSTER[@]}" down --state "$STATE" >&2 || true
    exit 1
fi

cat >"$STATE_DIR/env" <<ENV
# Written by platform/cluster-up.sh: what a client of the local cluster needs (source this file).
export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_DASHBOARD_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_GCS_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_AUTH_MODE=token
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_TEMP_DIR=$RAY_TEMP_DIR
export DIEN_SERVE_PORT=$SERVE_PORT
ENV

for _ in $(seq 60); do   # the dashboard answers a moment after `ray start` returns (this path needs no token)
    curl -fs -o /dev/null "http://127.0.0.1:$DASHBOARD_PORT/api/gcs_healthz" && break
    sleep 1
done

cat <<INFO
Ray cluster up: $NUM_CPUS CPUs, token authentication on, temp dir $RAY_TEMP_DIR, state $STATE
  GCS address        127.0.0.1:$RAY_PORT         (ray.init(address="127.0.0.1:$RAY_PORT"), ray status --address ...)
  dashboard          http://127.0.0.1:$DASHBOARD_PORT   (ray job submit, serve deploy, the web UI)
  auth token         ~/.ray/auth_token (ray get-auth-token prints it; RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH also work)
  Serve HTTP         http://127.0.0.1:$SERVE_PORT once an application is deployed (jobs/deploy.py)

Listening now (every process of the cluster, from /proc):
$("${CLUSTER[@]}" listeners --state "$STATE")
  Serve's proxy listens on 127.0.0.1:$SERVE_PORT once deployed (http_options.host in serve_configs/*.yaml).

Client environment (also in $STATE_DIR/env: source it):
  export RAY_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

Examples:
  $VENV/bin/ray job submit -- "$VENV/bin/python" "$PWD/jobs/prepare_data.py" --out "$PWD/data/synthetic"
  $VENV/bin/python jobs/deploy.py serve_configs/local.yaml
  make cluster-down
INFO
