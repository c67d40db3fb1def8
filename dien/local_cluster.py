"""The Ray cluster that ``platform/cluster-up.sh`` runs on this machine: its state file, its processes, the
sockets they listen on, and stopping exactly them.

``ray start`` leaves the processes it starts (GCS, raylet, dashboard, monitors, the Ray client server) to init,
so they are not its children by the time a cluster is stopped, and not all of them name the cluster's temp dir.
``cluster-up.sh`` therefore runs ``ray start`` in a new session (``setsid``): every process of the cluster
belongs to that session or descends from one that does (job drivers get sessions of their own). The state file
(``runs/cluster/state.json``) names the session, when it started, the temp dir and the ports, so that
``cluster-down.sh`` stops this cluster and no other. Linux only (``/proc``), like ``cluster-up.sh``.

    python -m dien.local_cluster check-ports DASHBOARD_PORT=8265 ...   # exit 2 naming the first taken one
    python -m dien.local_cluster record --state F --started T --temp-dir D NAME=PORT ...
    python -m dien.local_cluster running --state F                     # exit 0 when it has processes
    python -m dien.local_cluster listeners --state F                   # what listens where
    python -m dien.local_cluster down --state F                        # stop it; exit 1 if a process survives
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PORT_ROLES = {
    "RAY_PORT": "the GCS",
    "DASHBOARD_PORT": "the dashboard",
    "AGENT_PORT": "the dashboard agent (ray job submit)",
    "CLIENT_PORT": "the Ray client server",
    "SERVE_PORT": "Serve's HTTP proxy",
    "DASHBOARD_METRIC_PORT": "the dashboard's Prometheus metrics",
    "AUTOSCALER_METRIC_PORT": "the autoscaler's Prometheus metrics",
}
"""The ports ``cluster-up.sh`` sets (its environment variables) and what listens on each."""
STOP_GRACE_S = 5.0
WORKER_PORTS = (10002, 19999)
"""The range ``ray start`` gives workers by default (its --min-worker-port and --max-worker-port)."""


@dataclass(frozen=True)
class ClusterState:
    session: int
    """The session id of every process ``ray start`` started (the pid of ``ray start`` itself)."""
    started: float
    """Wall-clock time just before ``ray start``: a process of the session that is older is not the cluster's."""
    temp_dir: str
    ports: dict[str, int]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> ClusterState:
        return cls(**json.loads(path.read_text()))


@dataclass(frozen=True)
class Process:
    pid: int
    ppid: int
    session: int
    started: float
    zombie: bool
    command: str

    @property
    def name(self) -> str:
        """What it runs: its Python script or module, else its executable."""
        words = self.command.split() or ["?"]
        executable = os.path.basename(words[0])
        if not executable.startswith("python"):
            return executable
        if "-m" in words[:-1]:
            return words[words.index("-m") + 1]
        return os.path.basename(next((w for w in words if w.endswith(".py")), executable))


def _boot_time() -> float:
    with open("/proc/stat") as stat:
        return float(next(line.split()[1] for line in stat if line.startswith("btime")))


def processes() -> dict[int, Process]:
    """Every process of this machine that can be read."""
    boot, ticks = _boot_time(), os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                command = file.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile
            continue
        # Fields after the command name: state, ppid, pgrp, session, ..., starttime (the 20th).
        table[int(entry)] = Process(int(entry), int(fields[1]), int(fields[3]), boot + int(fields[19]) / ticks,
                                    fields[0] == "Z", command)
    return table


def members(state: ClusterState, table: dict[int, Process] | None = None) -> dict[int, Process]:
    """The cluster's running processes: its session's, and everything they started."""
    table = processes() if table is None else table
    found = {pid: p for pid, p in table.items()
             if p.session == state.session and p.started >= state.started - 1 and pid != os.getpid()}
    grew = True
    while grew:
        children = {pid: p for pid, p in table.items() if p.ppid in found and pid not in found}
        found.update(children)
        grew = bool(children)
    return {pid: p for pid, p in found.items() if not p.zombie}


def session_of(temp_dir: str, started: float) -> int:
    """The session of the cluster just started with ``temp_dir``: that of its processes that name the temp dir
    (the GCS, the raylet, the dashboard) and started after ``started``."""
    temp_dir = temp_dir.rstrip("/")
    sessions = {p.session for p in processes().values() if p.started >= started - 1 and not p.zombie
                and (f"{temp_dir}/" in p.command or f"={temp_dir}" in p.command)}
    if len(sessions) != 1:
        raise SystemExit(f"error: {len(sessions)} sessions of processes with temp dir {temp_dir} started since "
                         f"{time.ctime(started)}; expected the one of `ray start`")
    return sessions.pop()


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    process: str

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The address, an IPv4 one where an IPv6 socket listens on an IPv4-mapped address."""
        address = ipaddress.ip_address(self.host)
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            return address.ipv4_mapped
        return address

    @property
    def loopback(self) -> bool:
        return self.address.is_loopback

    def __str__(self) -> str:
        address = self.address
        return f"{address}:{self.port}" if address.version == 4 else f"[{address}]:{self.port}"


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def _address(hex_address: str) -> str:
    """/proc/net/tcp's address: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listeners(pids: dict[int, Process]) -> list[Listener]:
    """The TCP sockets that ``pids`` listen on."""
    owner = {inode: process.name for pid, process in pids.items() for inode in _socket_inodes(pid)}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state == "0A" and inode in owner:  # 0A: LISTEN
                host, port = local.split(":")
                found.add(Listener(_address(host), int(port, 16), owner[inode]))
    return sorted(found, key=lambda item: (item.port, item.host))


def port_taken(port: int) -> bool:
    """Whether something listens on ``port`` (any address): the port a cluster would bind is not free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def taken_ports(ports: dict[str, int]) -> list[str]:
    """A line for every port of ``ports`` (variable -> port) that is taken, naming how to choose another."""
    lines = []
    for name, port in ports.items():
        if WORKER_PORTS[0] <= port <= WORKER_PORTS[1]:
            lines.append(f"port {port} ({name}: {PORT_ROLES.get(name, name)}) is one of Ray's worker ports "
                         f"({WORKER_PORTS[0]}-{WORKER_PORTS[1]}); choose another, e.g. {name}={free_port()}")
        elif port_taken(port):
            lines.append(f"port {port} ({name}: {PORT_ROLES.get(name, name)}) is taken on this machine; choose "
                         f"another, e.g. {name}={free_port()}")
    return lines


def stop(state: ClusterState) -> tuple[int, list[str], list[str]]:
    """SIGTERM the cluster's processes, what they started first (workers, agents, jobs, replicas: while the GCS
    and raylet still answer them, or they wait on the GCS instead of exiting), then its own; SIGKILL those of a
    group still running after its grace period. Returns how many there were, the names of those killed, and the
    names of those running after all."""
    cluster = members(state)
    own = {pid for pid, p in cluster.items() if p.ppid not in cluster}
    killed = []
    for group in (set(cluster) - own, own):
        _signal(group, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline and set(members(state)) & group:
            time.sleep(0.2)
        stubborn = {pid: p for pid, p in members(state).items() if pid in group}
        _signal(set(stubborn), signal.SIGKILL)
        killed += [p.name for p in stubborn.values()]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and members(state):
        time.sleep(0.1)
    return len(cluster), sorted(killed), sorted(p.name for p in members(state).values())


def _signal(pids: set[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _ports(pairs: list[str]) -> dict[str, int]:
    ports = {}
    for pair in pairs:
        name, _, port = pair.partition("=")
        if not port.isdigit():
            raise SystemExit(f"error: {pair!r} is not NAME=PORT")
        ports[name] = int(port)
    return ports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-ports", help="exit 2 naming every taken port")
    check.add_argument("ports", nargs="+", metavar="NAME=PORT")
    record = commands.add_parser("record", help="write the state file of a cluster just started")
    record.add_argument("ports", nargs="*", metavar="NAME=PORT")
    for name in ("running", "listeners", "down"):
        commands.add_parser(name)
    for sub in commands.choices.values():
        if sub is not check:
            sub.add_argument("--state", type=Path, required=True, help="the cluster's state file")
    record.add_argument("--started", type=float, required=True)
    record.add_argument("--temp-dir", required=True)
    args = parser.parse_args(argv)

    if args.command == "check-ports":
        problems = taken_ports(_ports(args.ports))
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 2 if problems else 0
    if args.command == "record":
        ClusterState(session_of(args.temp_dir, args.started), args.started, args.temp_dir,
                     _ports(args.ports)).save(args.state)
        return 0
    if not args.state.exists():
        print(f"no cluster state at {args.state}: no cluster of platform/cluster-up.sh is running from here")
        return 1 if args.command == "running" else 0
    state = ClusterState.load(args.state)
    if args.command == "running":
        return 0 if members(state) else 1
    if args.command == "listeners":
        found = listeners(members(state))
        for listener in found:
            where = "loopback" if listener.loopback else "ALL INTERFACES" if listener.address.is_unspecified \
                else "beyond the loopback"
            print(f"  {str(listener):<24} {listener.process:<24} {where}")
        exposed = [f"{x} ({x.process})" for x in found if not x.loopback]
        print(f"  {len(found)} listening sockets, " + (f"{len(exposed)} beyond the loopback: {', '.join(exposed)}"
                                                      if exposed else "every one on the loopback (127.0.0.1)"))
        return 0
    count, killed, survivors = stop(state)
    if not count:
        print(f"the cluster of {args.state} (temp dir {state.temp_dir}) was not running")
    elif survivors:
        print(f"error: {len(survivors)} of the cluster's {count} processes survived SIGKILL: {', '.join(survivors)}",
              file=sys.stderr)
        return 1
    else:
        print(f"stopped the Ray cluster with temp dir {state.temp_dir}: {count} processes, none left"
              + (f" (killed after the grace period: {', '.join(killed)})" if killed else ""))
    args.state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
