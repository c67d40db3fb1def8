"""Two Ray nodes on this machine, then one: a training run that loses a node resumes from its checkpoint on what
is left, and serving that loses a node keeps answering.

Starts a head and a worker node with ``ray.cluster_utils.Cluster`` (a raylet, object store and resources per
node, one GCS: what ``ray start --address`` on a second machine adds, without the second machine), then

1. trains DIEN with two Ray Train workers spread over both nodes (``placement_strategy: SPREAD``) and a
   checkpoint every few steps; once one exists, removes the worker node (its raylet and every process on it die
   at once, as when a machine is lost). The run restarts its worker group on the head from the latest checkpoint
   and finishes;
2. adds a worker node again and serves ``serve_configs/local.yaml``'s application with its Ingress and Scorer
   replicas spread one per node (``max_replicas_per_node: 1``) behind the head's proxy, fires requests from
   several threads, removes the worker node, and counts what every request got.

Every path the jobs use (data, storage, artifact, user history) is absolute and handed to them; on one machine
the nodes share a filesystem, so a path that exists only on the head cannot show up here (on several machines,
storage and artifacts must be on shared storage, as the README says).

    .venv/bin/python -m dien.bench.multinode_check --data data/synthetic --out runs/multinode_check.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from dien.bench.crash_check import wait_until
from dien.bench.deploy import LocalServe, Variant, load_config, variant_app
from dien.bench.redeploy_check import LoadProbe
from dien.bench.redis_process import free_port
from dien.bench.workload import score_bodies
from dien.ray_logs import SETUP_HOOK
from dien.serve.proxy_guard import PROXY_ENVIRONMENT
from dien.train.distributed import ClusterConfig, TrainJob, export_artifact, run_training
from dien.train.loop import TrainConfig

APP = "multinode-check"
CPUS_PER_NODE = 2


def alive_nodes() -> set[str]:
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def placement_nodes() -> Counter[str]:
    """Bundles per node of the created placement groups (Ray Train's worker group holds one)."""
    nodes: Counter[str] = Counter()
    for group in ray.util.placement_group_table().values():
        if group["state"] == "CREATED":
            nodes.update(group["bundles_to_node_id"].values())
    return nodes


def registered_step(run: Path) -> int:
    """The global step of the run's latest checkpoint that Ray Train has registered (every rank reported it),
    0 when none: a checkpoint directory appears before that."""
    try:
        results = json.loads((run / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return 0
    return max((r["metrics"].get("global_step", 0) for r in results), default=0)


def train_losing_a_node(cluster: Cluster, worker, data: str, scratch: Path, epochs: int,
                        timeout_s: float) -> dict[str, Any]:
    storage = scratch / "train"
    job = TrainJob(data=data, model="dien", model_options={"hidden": 16},
                   train=TrainConfig(epochs=epochs, batch_size=128, patience=None),
                   cluster=ClusterConfig(workers=2, cpus_per_worker=1.0, storage=str(storage), run_name="multinode",
                                         max_failures=2, checkpoint_every_steps=5, placement_strategy="SPREAD"))
    outcome: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=run_training(job)), daemon=True)
    started = time.monotonic()
    thread.start()
    wait_until(lambda: registered_step(storage / "multinode") > 0 and len(placement_nodes()) == 2, timeout_s,
               "no checkpoint of workers on both nodes")
    spread, checkpointed = dict(placement_nodes()), registered_step(storage / "multinode")
    cluster.remove_node(worker, allow_graceful=False)
    removed_at = time.monotonic() - started
    thread.join(timeout_s)
    if "result" not in outcome:
        raise TimeoutError(f"training did not finish within {timeout_s:.0f} s of losing the node")
    result = outcome["result"]
    if result.error:
        raise RuntimeError(f"training failed after losing the node: {result.error}")
    artifact = export_artifact(job, result, scratch / "artifact")
    return {"workers_per_node_before": sorted(spread.values()), "node_removed_at_s": round(removed_at, 1),
            "checkpoint_step_at_removal": checkpointed,
            "seconds": round(time.monotonic() - started, 1), "resumed_from_step": result.metrics["resumed_from_step"],
            "global_step": result.metrics["global_step"], "epoch": result.metrics["epoch"],
            "valid_auc": round(result.metrics["valid_auc"], 4), "artifact": str(artifact)}


def replica_nodes(app: str) -> dict[str, list[str]]:
    """Node ids of each deployment's running replicas (Serve's controller's details)."""
    details = ray.serve.context._get_global_client().get_serve_details()
    deployments = details["applications"][app]["deployments"]
    return {name: sorted(r["node_id"] for r in d["replicas"] if r["state"] == "RUNNING")
            for name, d in deployments.items()}


def serve_losing_a_node(cluster: Cluster, model: str, data: str, threads: int, seconds_after: float,
                        timeout_s: float) -> dict[str, Any]:
    worker = cluster.add_node(num_cpus=CPUS_PER_NODE)
    cluster.wait_for_nodes()
    base = load_config("serve_configs/local.yaml")
    app = variant_app(base, Variant(APP, model), data)
    for deployment in app["deployments"]:
        deployment.update(num_replicas=2, max_replicas_per_node=1)
    serve = LocalServe(port=free_port(), proxy_location="HeadOnly")  # one machine: one proxy on the port
    serve.deploy({**base, "applications": [app]})
    spread = replica_nodes(APP)
    body = json.loads(score_bodies(data, 100, 1).bodies[0])
    with LoadProbe(serve.url_of(app), body, threads=threads) as probe:
        time.sleep(5.0)
        before = probe.report.requests
        cluster.remove_node(worker, allow_graceful=False)
        removed = time.monotonic()
        wait_until(lambda: worker.node_id not in alive_nodes(), timeout_s, "the removed node still counted alive")
        time.sleep(seconds_after)
        after = probe.report.requests - before
    report, remaining = probe.report, replica_nodes(APP)
    serve.close()
    return {"replica_nodes_before": {name: len(set(nodes)) for name, nodes in spread.items()},
            "replicas_after": {name: len(nodes) for name, nodes in remaining.items()},
            "requests": report.requests, "requests_after_removal": after,
            "seconds_after_removal": round(time.monotonic() - removed, 1), "failures": dict(report.failures)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="prepared dataset (training, the store, the requests)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (the node is lost in the first)")
    parser.add_argument("--threads", type=int, default=4, help="requests in flight while serving")
    parser.add_argument("--serve-seconds", type=float, default=15.0,
                        help="seconds of requests after the node is gone")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds each part may take")
    parser.add_argument("--out", default="runs/multinode_check.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    data = str(Path(args.data).resolve())
    os.environ.update(PROXY_ENVIRONMENT)  # inherited by every node's processes
    # The GCS declares a node dead after this many missed health checks: 1 s apart here, not Ray's 3 s x 5.
    health_checks = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": CPUS_PER_NODE + 1, "include_dashboard": False,
                                                            "_system_config": health_checks})
    worker = cluster.add_node(num_cpus=CPUS_PER_NODE)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING,
             runtime_env={"worker_process_setup_hook": SETUP_HOOK})
    try:
        with tempfile.TemporaryDirectory(prefix="dien-multinode-") as scratch:
            training = train_losing_a_node(cluster, worker, data, Path(scratch), args.epochs, args.timeout)
            print(json.dumps({"training": training}, indent=2), flush=True)
            serving = serve_losing_a_node(cluster, training["artifact"], data, args.threads, args.serve_seconds,
                                          args.timeout)
    finally:
        ray.shutdown()
        cluster.shutdown()
    report = {"training": {k: v for k, v in training.items() if k != "artifact"}, "serving": serving}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if not serving["failures"] and training["resumed_from_step"] >= training["checkpoint_step_at_removal"] \
        else 1


if __name__ == "__main__":
    sys.exit(main())
