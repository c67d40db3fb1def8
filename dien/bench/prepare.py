"""The prepare job's throughput and peak memory per input size (``jobs/bench_prepare.py``).

Each size runs ``jobs/prepare_data.py`` in a fresh process (its own embedded Ray) while a sampler reads the
memory of that process and all its descendants (Ray's raylet, object store, workers) from /proc: RSS counts
shared pages (the object store) once per process that maps them, PSS splits them, so the PSS sum is the machine
memory the job holds. Linux only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(parent, []).append(int(entry))
    return tree


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; zeros if it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    except (OSError, ValueError):
        return 0, 0
    return int(fields["Rss"].split()[0]), int(fields["Pss"].split()[0])


class TreeMemorySampler(threading.Thread):
    """Samples the summed memory of a process tree until stopped; keeps the peaks, and each process's
    CPU time (a process that lives less than one interval is missed)."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = self.peak_driver_rss = 0
        self.peak_processes = 0
        self.cpu: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            tree, pids, frontier = _children(), [], [self.root]
            while frontier:
                pid = frontier.pop()
                pids.append(pid)
                frontier.extend(tree.get(pid, []))
            usage = [_memory_kib(pid) for pid in pids]
            for pid in pids:
                self.cpu[pid] = max(self.cpu.get(pid, 0.0), _cpu_seconds(pid))
            self.peak_rss = max(self.peak_rss, sum(r for r, _ in usage))
            self.peak_pss = max(self.peak_pss, sum(p for _, p in usage))
            self.peak_driver_rss = max(self.peak_driver_rss, usage[0][0])
            self.peak_processes = max(self.peak_processes, len(pids))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_size(job: Path, events: int, protocol: str, extra: list[str], workdir: Path) -> dict:
    """One run of the prepare job script ``job`` on ``events`` synthetic events, sampled."""
    out = workdir / f"synthetic_{events}"
    command = [sys.executable, str(job), "--source", "synthetic", "--events", str(events), "--protocol", protocol,
               "--out", str(out), "--no-progress", "--log-level", "WARNING", *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = TreeMemorySampler(process.pid)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.stop()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"prepare failed for {events} events:\n{stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    read, seconds = manifest["events"]["read"], manifest["seconds"]
    return {
        "events": read,
        "protocol": protocol,
        "samples": manifest["counts"],
        "users": manifest["users"],
        "prepare_seconds": seconds,
        "job_seconds": round(wall, 1),
        "events_per_second": round(read / seconds),
        "cpu_seconds": round(sum(sampler.cpu.values()), 1),
        "peak_pss_mib": round(sampler.peak_pss / 1024),
        "peak_rss_sum_mib": round(sampler.peak_rss / 1024),
        "peak_driver_rss_mib": round(sampler.peak_driver_rss / 1024),
        "peak_processes": sampler.peak_processes,
        "output_mib": round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20, 1),
        "summary": stdout.strip().splitlines(),
    }


def format_table(results: list[dict]) -> str:
    lines = [f"{'events':>12} {'samples':>10} {'prepare s':>10} {'job s':>7} {'CPU s':>6} {'events/s':>10} "
             f"{'peak PSS MiB':>13} {'peak RSS-sum MiB':>17} {'driver MiB':>11} {'procs':>6}"]
    for r in results:
        lines.append(f"{r['events']:>12,} {sum(r['samples'].values()):>10,} {r['prepare_seconds']:>10.1f} "
                     f"{r['job_seconds']:>7.1f} {r['cpu_seconds']:>6.0f} {r['events_per_second']:>10,} "
                     f"{r['peak_pss_mib']:>13,} {r['peak_rss_sum_mib']:>17,} {r['peak_driver_rss_mib']:>11,} "
                     f"{r['peak_processes']:>6}")
    return "\n".join(lines)
