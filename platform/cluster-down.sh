#!/usr/bin/env bash
# Stop the local Ray cluster that platform/cluster-up.sh started, and only that one.
#
#   make cluster-down                      # or: platform/cluster-down.sh
#
# `ray stop` would end every Ray process on the machine, other people's embedded Rays included. This stops
# the processes whose command line names this cluster's temp dir (GCS, raylet, dashboard, monitors) and
# everything they started (agents, workers, jobs, Serve replicas): SIGTERM first, SIGKILL after a grace period.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
[[ "$VENV" = /* ]] || VENV="$PWD/$VENV"
RAY_TEMP_DIR=${RAY_TEMP_DIR:-/tmp/ray-dien}
STATE_DIR=runs/cluster

"$VENV/bin/python" - "$RAY_TEMP_DIR" <<'PY'
import os
import signal
import subprocess
import sys
import time

temp_dir = sys.argv[1].rstrip("/")
table = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, check=True).stdout
parent, args = {}, {}
for line in table.splitlines():
    pid, ppid, command = (line.split(None, 2) + [""])[:3]
    parent[int(pid)], args[int(pid)] = int(ppid), command
# The cluster's own processes name its temp dir (--temp-dir=, --session-dir=, --log_dir=, sockets, ...).
roots = {pid for pid, command in args.items()
         if pid != os.getpid() and (f"{temp_dir}/" in command or command.endswith(f"={temp_dir}")
                                    or f"={temp_dir} " in command)}
members, grew = set(roots), True
while grew:  # and everything they started: agents, workers, job drivers, Serve replicas
    children = {pid for pid, ppid in parent.items() if ppid in members} - members
    members |= children
    grew = bool(children)
if not members:
    print(f"no Ray cluster with temp dir {temp_dir} is running")
    sys.exit(0)


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie (an exited child its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (macOS): trust kill(0)
        return True


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def name(pid: int) -> str:
    """What a process runs: its Python script, else its executable."""
    words = args[pid].split()
    return os.path.basename(next((w for w in words if w.endswith(".py")), words[0]))


def stop(pids: set[int], grace_s: float) -> list[int]:
    """SIGTERM ``pids``, wait up to ``grace_s`` for them to exit; the ones still running."""
    signal_all([pid for pid in pids if alive(pid)], signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.2)
    return [pid for pid in pids if alive(pid)]


# What the cluster started first (workers, agents, jobs, replicas), while the GCS and raylets still answer
# them: a worker that loses the GCS first waits on it instead of exiting. Then the cluster's own processes.
killed = stop(members - roots, 10) + stop(roots, 10)
signal_all(killed, signal.SIGKILL)
stubborn = ", ".join(sorted(name(pid) for pid in killed))
print(f"stopped the Ray cluster with temp dir {temp_dir}: {len(members)} processes"
      + (f" (killed after the grace period: {stubborn})" if killed else ""))
PY
rm -f "$STATE_DIR/env"
