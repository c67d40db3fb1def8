"""The whole platform on a local cluster, the way its users run it (`make demo`, about 4-5 minutes on 2 cores):

    cluster-up (token auth) -> ray job submit: prepare data -> train the teacher (hidden 108)
    -> distil the student (hidden 32) -> evaluate both -> serve deploy -> a few scoring requests
    -> a 20-second QPS run -> cluster-down, then a summary (AUCs, requests/s, p99).

Every step goes through the command-line tools (`ray job submit`, `serve deploy`, `jobs/benchmark_qps.py`)
with the virtualenv's interpreter and absolute paths, as README's "Training on Ray" and "Serving" describe.
The cluster is stopped whatever happens (a failed step, Ctrl-C, SIGTERM). Outputs go to --out (default
runs/demo, replaced): data/, artifacts/, logs/ (each step's full output), evaluate.json, qps/, serve.yaml.

    python jobs/demo.py                     # what `make demo` runs
    python jobs/demo.py --users 20000 --epochs 2
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
"""The virtualenv's bin: its python for the jobs, its ray and serve for the CLIs."""
DASHBOARD = "http://127.0.0.1:8265"
SERVE_URL = "http://127.0.0.1:8000"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RAY_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\(\w+ pid=|\[\d|\s*$)")
"""Lines of Ray's own logging (timestamped, from workers, progress), not a job's summary."""


@dataclass
class Demo:
    out: Path
    users: int
    epochs: int
    qps_seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.out / "data"

    def artifact(self, name: str) -> Path:
        return self.out / "artifacts" / name

    def run(self, step: str, command: list[str], env: dict[str, str] | None = None) -> str:
        """Run ``command`` (output to logs/<step>.log), time it, and return its output; a failure raises."""
        print(f"\n== {step}", flush=True)
        log = self.out / "logs" / f"{step.split()[0]}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with log.open("w") as file:
            completed = subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=file,
                                       stderr=subprocess.STDOUT, text=True)
        self.timings[step] = time.monotonic() - started
        output = ANSI.sub("", log.read_text())
        if completed.returncode != 0:
            print("\n".join(output.splitlines()[-40:]))
            raise RuntimeError(f"step '{step}' failed with exit code {completed.returncode} (full log: {log})")
        return output

    def submit(self, step: str, script: str, *args: str | Path) -> str:
        """``ray job submit`` of ``jobs/<script>`` with the venv's interpreter; prints the job's summary lines."""
        command = [str(BIN / "ray"), "job", "submit", "--address", DASHBOARD, "--",
                   str(BIN / "python"), str(ROOT / "jobs" / script), *map(str, args)]
        output = self.run(step, command, env=CLIENT_ENV)
        job_output = output.split("Running entrypoint for job", 1)[-1].splitlines()[1:]
        summary = [line for line in job_output if not RAY_LINE.match(line) and "Job '" not in line
                   and not line.startswith(("---", "Traceback", "ray.exceptions", "  File", "    "))]
        print("\n".join(summary[-12:]) + f"\n({self.timings[step]:.0f} s)", flush=True)
        return output


CLIENT_ENV = {"RAY_ADDRESS": DASHBOARD, "RAY_DASHBOARD_ADDRESS": DASHBOARD, "RAY_AUTH_MODE": "token"}
"""What a client of the cluster needs (what platform/cluster-up.sh prints and writes to runs/cluster/env)."""


def serve_config(demo: Demo) -> Path:
    """serve_configs/local.yaml with the demo's student and dataset (absolute paths)."""
    config = yaml.safe_load((ROOT / "serve_configs" / "local.yaml").read_text())
    config["applications"][0]["args"].update(model=str(demo.artifact("student")), history=str(demo.data))
    path = demo.out / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def dashboard_answers() -> bool:
    try:
        requests.get(f"{DASHBOARD}/api/gcs_healthz", timeout=2)
    except requests.RequestException:
        return False
    return True


def wait_healthy(timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{SERVE_URL}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{SERVE_URL}/healthz did not answer 200 within {timeout_s:.0f} s (see `serve status`)")


def score_examples(demo: Demo, users: int = 3, candidates: int = 5) -> None:
    from dien.bench.workload import score_bodies

    print(f"\n== scoring: {users} users, {candidates} candidates each, POST {SERVE_URL}/v1/score")
    for body in score_bodies(demo.data, candidates, requests=users, seed=7).bodies:
        request = json.loads(body)
        answer = requests.post(f"{SERVE_URL}/v1/score", data=body, headers={"Content-Type": "application/json"},
                               timeout=30)
        answer.raise_for_status()
        reply = answer.json()
        ranked = sorted(zip(reply["scores"], request["candidates"]), key=lambda pair: -pair[0])
        scored = ", ".join(f"{c['item_id']}/{c['category']} {s:.3f}" for s, c in ranked)
        print(f"  user {request['user_id']} (history {reply['history_length']}), ranked: {scored}")
    print(f"  model: {reply['model']}")


def summary(demo: Demo, started: float) -> str:
    lines = ["", "== summary"]
    evaluation = demo.out / "evaluate.json"
    if evaluation.exists():
        for row in json.loads(evaluation.read_text())["results"]:
            lines.append(f"  {Path(row['artifact']).name:<8} hidden {row['hidden']:>3}: test AUC {row['auc']:.4f}, "
                         f"GAUC {row['gauc']:.4f}, logloss {row['logloss']:.4f}")
    qps = demo.out / "qps" / "results.json"
    if qps.exists():
        for r in json.loads(qps.read_text())["results"]:
            lines.append(f"  serving ({r['candidates']} candidates/request, {r['concurrency']} in flight, "
                         f"{r['duration_s']:.0f} s): {r['requests_per_s']:.1f} req/s, {r['candidates_per_s']:.0f} "
                         f"candidates/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, {r['errors']} errors")
    lines.append("  steps: " + ", ".join(f"{step.split()[0]} {seconds:.0f} s" for step, seconds in demo.timings.items()))
    lines.append(f"  total: {time.monotonic() - started:.0f} s")
    return "\n".join(lines)


def run_demo(demo: Demo) -> None:
    python = str(BIN / "python")
    print(demo.run("cluster-up (NUM_CPUS=4, token auth)", ["bash", str(ROOT / "platform" / "cluster-up.sh")],
                   env={"NUM_CPUS": "4", "VENV": str(BIN.parent)}).rstrip())
    demo.submit("prepare synthetic data", "prepare_data.py", "--source", "synthetic", "--users", demo.users,
                "--out", demo.data)
    training = ["--epochs", demo.epochs, "--workers", 2, "--cpus-per-worker", 1, "--storage", demo.out / "train"]
    demo.submit("teacher (train, hidden 108)", "train.py", "--data", demo.data, "--model", "dien", "--hidden", 108,
                *training, "--run-name", "teacher", "--out", demo.artifact("teacher"))
    demo.submit("student (distill, hidden 32)", "distill.py", "--teacher", demo.artifact("teacher"),
                "--data", demo.data, "--hidden", 32, *training, "--run-name", "student",
                "--out", demo.artifact("student"))
    demo.submit("evaluate", "evaluate.py", "--model", demo.artifact("teacher"), "--model", demo.artifact("student"),
                "--data", demo.data, "--out", demo.out / "evaluate.json")
    demo.run("deploy (serve deploy)", [str(BIN / "serve"), "deploy", "--address", DASHBOARD, str(serve_config(demo))],
             env=CLIENT_ENV)
    began = time.monotonic()
    wait_healthy()
    demo.timings["deploy (serve deploy)"] += time.monotonic() - began
    print(f"serving at {SERVE_URL} ({demo.timings['deploy (serve deploy)']:.0f} s)")
    score_examples(demo)
    output = demo.run("qps (20 s, 100 candidates, 32 in flight)",
                      [python, str(ROOT / "jobs" / "benchmark_qps.py"), "--url", SERVE_URL, "--data", str(demo.data),
                       "--candidates", "100", "--concurrency", "32", "--duration", str(demo.qps_seconds),
                       "--warmup", "2", "--out", str(demo.out / "qps")])
    print("\n".join(line for line in output.splitlines() if line.startswith(("variant", "---", "target"))))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output directory (replaced)")
    parser.add_argument("--users", type=int, default=10_000, help="synthetic users")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the teacher and of the student")
    parser.add_argument("--qps-seconds", type=float, default=20.0, help="length of the QPS measurement")
    args = parser.parse_args()
    if dashboard_answers():
        print(f"error: a Ray cluster already answers at {DASHBOARD}: stop it first (make cluster-down)", file=sys.stderr)
        return 2
    demo = Demo(out=(ROOT / args.out).resolve(), users=args.users, epochs=args.epochs, qps_seconds=args.qps_seconds)
    shutil.rmtree(demo.out, ignore_errors=True)
    demo.out.mkdir(parents=True)
    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, through the `finally` that stops the cluster.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started, failed = time.monotonic(), None
    try:
        run_demo(demo)
    except (RuntimeError, TimeoutError, requests.RequestException) as error:
        failed = error
    finally:
        print("\n== cluster-down", flush=True)
        subprocess.run(["bash", str(ROOT / "platform" / "cluster-down.sh")], cwd=ROOT, check=False,
                       env={**os.environ, "VENV": str(BIN.parent)})
    print(summary(demo, started))
    if failed:
        print(f"\ndemo failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
