#!/usr/bin/env bash
# Stop the local Ray cluster that platform/cluster-up.sh started, and only that one.
#
#   make cluster-down                      # or: platform/cluster-down.sh
#
# `ray stop` would end every Ray process on the machine, other people's embedded Rays included. This reads the
# cluster's state file (runs/cluster/state.json, written by cluster-up.sh) and stops the processes of the
# session it names and everything they started (agents, workers, job drivers, Serve replicas, the Ray client
# server): SIGTERM first, SIGKILL after a grace period, then checks that none is left (exit 1 if one is).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
[[ "$VENV" = /* ]] || VENV="$PWD/$VENV"
STATE_DIR=${STATE_DIR:-runs/cluster}

"$VENV/bin/python" -m dien.local_cluster down --state "$STATE_DIR/state.json"
rm -f "$STATE_DIR/env"
