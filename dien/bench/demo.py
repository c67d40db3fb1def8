"""The whole platform on a local cluster, the way its users run it (``jobs/demo.py``, ``make demo``):

    cluster-up (token auth) -> jobs on the cluster: prepare data -> train the teacher (hidden 108)
    -> distil the student (hidden 32) -> evaluate both -> deploy -> a few scoring requests
    -> a QPS run -> cluster-down, then a summary (AUCs, requests/s, p99).

The demo's cluster is its own (state and temp dir apart from ``make cluster-up``'s), on Ray's usual ports where
they are free and on free ones where they are taken (each change printed), so it runs beside other clusters.

Each job goes to the cluster through Ray's job submission client (what ``ray job submit`` uses; the equivalent
command is printed), with the virtualenv's interpreter and absolute paths, as README's "Training on Ray"
describes; what a step reports comes from the files it writes (the dataset manifest, the artifacts' manifests,
evaluate.json, the QPS results), never from its log text. The student is deployed as ``jobs/deploy.py`` deploys
(``dien.serve.deploy``: up when its application is RUNNING, the proxy HEALTHY and its /healthz answers on the
demo's port). The cluster is stopped whatever happens. Outputs go to ``Demo.out``: data/, artifacts/, logs/ (each
step's full output), evaluate.json, qps/, serve.yaml, cluster/ (the cluster's state and client environment).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from dien.bench.workload import score_bodies
from dien.local_cluster import PORT_ROLES, free_port, port_taken
from dien.serve.deploy import deploy

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
"""The virtualenv's bin: its python for the jobs, its ray and serve for the CLIs."""
DEFAULT_PORTS = {"RAY_PORT": 6379, "DASHBOARD_PORT": 8265, "AGENT_PORT": 52375, "CLIENT_PORT": 10001,
                 "SERVE_PORT": 8000, "DASHBOARD_METRIC_PORT": 44227, "AUTOSCALER_METRIC_PORT": 44217}
"""platform/cluster-up.sh's ports (its defaults)."""
TEMP_DIR = "/tmp/ray-dien-demo"
PROGRESS_EVERY_S = 30.0


def choose_ports() -> dict[str, int]:
    """cluster-up.sh's default ports, each taken one replaced by a free one (and said so)."""
    ports = {}
    for name, port in DEFAULT_PORTS.items():
        ports[name] = port if not port_taken(port) else free_port()
        if ports[name] != port:
            print(f"port {port} ({PORT_ROLES[name]}) is taken: the demo uses {ports[name]} ({name}={ports[name]})")
    return ports


@dataclass
class Demo:
    out: Path
    users: int
    epochs: int
    qps_seconds: float
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.ports['DASHBOARD_PORT']}"

    @property
    def serve_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['SERVE_PORT']}"

    @property
    def cluster_env(self) -> dict[str, str]:
        """What platform/cluster-up.sh and cluster-down.sh read: this demo's ports, state dir and temp dir."""
        return {**{name: str(port) for name, port in self.ports.items()}, "NUM_CPUS": "4", "VENV": str(BIN.parent),
                "STATE_DIR": str(self.out / "cluster"), "RAY_TEMP_DIR": TEMP_DIR}

    @property
    def data(self) -> Path:
        return self.out / "data"

    def artifact(self, name: str) -> Path:
        return self.out / "artifacts" / name

    def log(self, step: str) -> Path:
        path = self.out / "logs" / f"{step.split()[0]}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def run(self, step: str, command: list[str], env: dict[str, str] | None = None) -> str:
        """Run a local ``command`` (output to logs/<step>.log), time it, and return its output; a failure raises."""
        print(f"\n== {step}", flush=True)
        log = self.log(step)
        started = time.monotonic()
        with log.open("w") as file:
            completed = subprocess.run(command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=file,
                                       stderr=subprocess.STDOUT, text=True)
        self.timings[step] = time.monotonic() - started
        output = log.read_text()
        if completed.returncode != 0:
            print("\n".join(output.splitlines()[-40:]))
            raise RuntimeError(f"step '{step}' failed with exit code {completed.returncode} (full log: {log})")
        return output

    def submit(self, client, step: str, script: str, *args: str | Path) -> None:
        """Run ``jobs/<script>`` as a job on the cluster (``client``: a ``JobSubmissionClient``), printing its
        status every 30 s; its logs go to logs/<step>.log, and a job that does not succeed raises."""
        from ray.job_submission import JobStatus

        entrypoint = shlex.join([str(BIN / "python"), str(ROOT / "jobs" / script), *map(str, args)])
        print(f"\n== {step}\n$ ray job submit -- {entrypoint}", flush=True)
        started = last_report = time.monotonic()
        job_id = client.submit_job(entrypoint=entrypoint)
        while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                 JobStatus.STOPPED):
            if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                print(f"  {job_id}: {status.value} ({time.monotonic() - started:.0f} s)", flush=True)
                last_report = time.monotonic()
            time.sleep(1.0)
        self.timings[step] = time.monotonic() - started
        log = self.log(step)
        log.write_text(client.get_job_logs(job_id))
        if status != JobStatus.SUCCEEDED:
            print("\n".join(log.read_text().splitlines()[-40:]))
            raise RuntimeError(f"job {job_id} ({step}) {status.value}: {client.get_job_info(job_id).message} "
                               f"(full log: {log})")
        print(f"  {job_id}: {status.value} ({self.timings[step]:.0f} s)", flush=True)


def report_dataset(demo: Demo) -> None:
    manifest = json.loads((demo.data / "manifest.json").read_text())
    counts = ", ".join(f"{split} {count:,}" for split, count in manifest["counts"].items())
    print(f"  samples: {counts}; {manifest['n_items']:,} items, {manifest['n_cats']:,} categories (with padding "
          "and out-of-vocabulary)", flush=True)


def report_artifact(path: Path) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    metrics = manifest["metrics"]
    print(f"  {path}: {manifest['model']['name']}, hidden {manifest['model']['config']['hidden']}; "
          + ", ".join(f"{key} {metrics[key]:.4f}" for key in ("valid_auc", "test_auc") if key in metrics),
          flush=True)


def serve_config(demo: Demo) -> Path:
    """serve_configs/local.yaml with the demo's student and dataset (absolute paths)."""
    config = yaml.safe_load((ROOT / "serve_configs" / "local.yaml").read_text())
    config["applications"][0]["args"].update(model=str(demo.artifact("student")), history=str(demo.data))
    path = demo.out / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def score_examples(demo: Demo, users: int = 3, candidates: int = 5) -> None:
    print(f"\n== scoring: {users} users, {candidates} candidates each, POST {demo.serve_url}/v1/score")
    for body in score_bodies(demo.data, candidates, requests=users, seed=7).bodies:
        request = json.loads(body)
        answer = requests.post(f"{demo.serve_url}/v1/score", data=body, headers={"Content-Type": "application/json"},
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
    # Ray reads RAY_AUTH_MODE when it loads, so the client is imported once the environment says "token".
    from ray.job_submission import JobSubmissionClient

    print(demo.run("cluster-up (NUM_CPUS=4, token auth)", ["bash", str(ROOT / "platform" / "cluster-up.sh")],
                   env=demo.cluster_env).rstrip())
    client = JobSubmissionClient(demo.dashboard)
    demo.submit(client, "prepare synthetic data", "prepare_data.py", "--source", "synthetic", "--users", demo.users,
                "--out", demo.data)
    report_dataset(demo)
    training = ["--epochs", demo.epochs, "--workers", 2, "--cpus-per-worker", 1, "--storage", demo.out / "train"]
    demo.submit(client, "teacher (train, hidden 108)", "train.py", "--data", demo.data, "--model", "dien",
                "--hidden", 108, *training, "--run-name", "teacher", "--out", demo.artifact("teacher"))
    report_artifact(demo.artifact("teacher"))
    demo.submit(client, "student (distill, hidden 32)", "distill.py", "--teacher", demo.artifact("teacher"),
                "--data", demo.data, "--hidden", 32, *training, "--run-name", "student",
                "--out", demo.artifact("student"))
    report_artifact(demo.artifact("student"))
    demo.submit(client, "evaluate", "evaluate.py", "--model", demo.artifact("teacher"),
                "--model", demo.artifact("student"), "--data", demo.data, "--out", demo.out / "evaluate.json")
    config = serve_config(demo)
    print(f"\n== deploy\n$ python jobs/deploy.py {config} --port {demo.ports['SERVE_PORT']}", flush=True)
    with_port = yaml.safe_load(config.read_text())
    with_port.setdefault("http_options", {})["port"] = demo.ports["SERVE_PORT"]
    demo.timings["deploy"] = deploy(demo.dashboard, with_port, progress=lambda line: print(line, flush=True))
    print(f"serving at {demo.serve_url} ({demo.timings['deploy']:.0f} s)")
    score_examples(demo)
    demo.run(f"qps ({demo.qps_seconds:.0f} s, 100 candidates, 32 in flight)",
             [str(BIN / "python"), str(ROOT / "jobs" / "benchmark_qps.py"), "--url", demo.serve_url,
              "--data", str(demo.data), "--candidates", "100", "--concurrency", "32",
              "--duration", str(demo.qps_seconds), "--warmup", "2", "--out", str(demo.out / "qps")])


def run(demo: Demo) -> int:
    """The whole demo in a fresh ``demo.out``; the cluster is stopped however it ends (also on SIGTERM, which the
    caller turns into ``SystemExit``). Returns the exit status: 0, 1 when a step failed, 2 when a cluster is
    already running."""
    state = demo.out / "cluster" / "state.json"
    if subprocess.run([str(BIN / "python"), "-m", "dien.local_cluster", "running", "--state", str(state)],
                      capture_output=True).returncode == 0:
        print(f"error: the cluster of an earlier demo ({state}) is still running: stop it first "
              f"(STATE_DIR={state.parent} make cluster-down)", file=sys.stderr)
        return 2
    shutil.rmtree(demo.out, ignore_errors=True)
    demo.out.mkdir(parents=True)
    demo.ports = choose_ports()
    os.environ["RAY_AUTH_MODE"] = "token"
    started, failed = time.monotonic(), None
    try:
        run_demo(demo)
    except (RuntimeError, TimeoutError, requests.RequestException) as error:
        failed = error
    finally:
        print("\n== cluster-down", flush=True)
        subprocess.run(["bash", str(ROOT / "platform" / "cluster-down.sh")], cwd=ROOT, check=False,
                       env={**os.environ, **demo.cluster_env})
    print(summary(demo, started))
    if failed:
        print(f"\ndemo failed: {failed}", file=sys.stderr)
        return 1
    return 0
