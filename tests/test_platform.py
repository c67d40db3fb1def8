"""platform/: every manifest parses, the RayService serves serve_configs/local.yaml's applications, the cluster
launcher config has CPU and GPU workers and passes Ray's own validation, and the scripts are sound."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from dien.cluster import GCS_ADDRESS_ENV, cluster_address
from dien.local_cluster import PORT_ROLES, ClusterState, listeners, members
from dien.serve.config import ServeArgs
from dien.serve.proxy_guard import PROXY_ENVIRONMENT
from servers import free_port

ROOT = Path(__file__).resolve().parents[1]
PLATFORM = ROOT / "platform"
MANIFESTS = sorted(PLATFORM.rglob("*.yaml"))
KUBERAY = PLATFORM / "kuberay"


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kuberay(kind: str) -> list[dict]:
    return [d for path in sorted(KUBERAY.glob("*.yaml")) for d in documents(path) if d.get("kind") == kind]


def ray_cluster_specs() -> list[dict]:
    """The RayCluster specs: a RayCluster's own, a RayJob's and a RayService's."""
    return ([c["spec"] for c in kuberay("RayCluster")] + [j["spec"]["rayClusterSpec"] for j in kuberay("RayJob")]
            + [s["spec"]["rayClusterConfig"] for s in kuberay("RayService")])


def test_platform_is_not_a_python_package():
    # It would shadow the standard library's `platform` module and break Ray, torch and pytest.
    assert not (PLATFORM / "__init__.py").exists()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(PLATFORM)))
def test_every_manifest_parses(path):
    parsed = documents(path)
    assert parsed and all(isinstance(d, dict) for d in parsed)


def test_kuberay_has_a_cluster_a_training_job_and_a_service():
    assert len(kuberay("RayCluster")) == len(kuberay("RayJob")) == len(kuberay("RayService")) == 1
    for resource in kuberay("RayCluster") + kuberay("RayJob") + kuberay("RayService"):
        assert resource["apiVersion"] == "ray.io/v1"


def test_rayservice_serves_the_local_serve_config():
    (service,) = kuberay("RayService")
    served = yaml.safe_load(service["spec"]["serveConfigV2"])
    local = yaml.safe_load((ROOT / "serve_configs" / "local.yaml").read_text())
    auth = served["applications"][0]["args"].pop("auth")
    assert served["applications"] == local["applications"]
    assert auth["tokens_env"] == "DIEN_API_TOKENS" and auth["open_paths"] == ["/healthz"]
    for group in [service["spec"]["rayClusterConfig"]["headGroupSpec"],
                  *service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]:
        (container,) = group["template"]["spec"]["containers"]
        assert {"name": "DIEN_API_TOKENS", "valueFrom": {"secretKeyRef": {"name": "dien-api-tokens",
                                                                          "key": "tokens"}}} in container["env"]
    ServeDeploySchema.model_validate(served)


def test_the_cluster_serve_config_requires_api_tokens():
    gpu = yaml.safe_load((ROOT / "serve_configs" / "gpu.yaml").read_text())
    auth = ServeArgs.model_validate(gpu["applications"][0]["args"]).auth
    assert auth is not None and auth.tokens_file == "~/.dien/api_tokens" and auth.open_paths == ("/healthz",)
    assert "~/.dien/api_tokens" in yaml.safe_load((ROOT / "platform" / "cluster.yaml").read_text())["file_mounts"]


def test_every_ray_cluster_runs_this_ray_with_token_auth():
    specs = ray_cluster_specs()
    assert len(specs) == 3
    for spec in specs:
        assert spec["rayVersion"] == ray.__version__
        assert spec["authOptions"]["mode"] == "token"


def test_kuberay_pods_mount_the_shared_storage_where_relative_paths_point():
    claims = {d["metadata"]["name"] for d in documents(KUBERAY / "storage.yaml")}
    for spec in ray_cluster_specs():
        for group in [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]:
            pod = group["template"]["spec"]
            assert {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]} <= claims
            mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
            assert {"/app/data", "/app/artifacts"} <= mounts


def test_rayjob_runs_jobs_that_exist():
    (job,) = kuberay("RayJob")
    scripts = re.findall(r"jobs/\w+\.py", job["spec"]["entrypoint"])
    assert {"jobs/prepare_data.py", "jobs/train.py", "jobs/distill.py"} <= set(scripts)
    assert all((ROOT / script).is_file() for script in scripts)


def test_raycluster_has_cpu_and_gpu_worker_groups():
    (cluster,) = kuberay("RayCluster")
    groups = {g["groupName"]: g["template"]["spec"]["containers"][0]["resources"]["limits"]
              for g in cluster["spec"]["workerGroupSpecs"]}
    assert any("nvidia.com/gpu" in limits for limits in groups.values())
    assert any("nvidia.com/gpu" not in limits for limits in groups.values())


def test_cluster_launcher_config_has_cpu_and_gpu_workers_and_is_valid():
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load((PLATFORM / "cluster.yaml").read_text())
    types = config["available_node_types"]
    workers = {name: t["resources"] for name, t in types.items() if name != config["head_node_type"]}
    assert any(r.get("GPU", 0) >= 1 for r in workers.values()), workers
    assert any(r.get("CPU", 0) > 0 and not r.get("GPU") for r in workers.values()), workers
    assert all("RAY_AUTH_MODE=token" in " ".join(config[key])
               for key in ("head_start_ray_commands", "worker_start_ray_commands"))
    validate_config(fillout_defaults(config))  # Ray's own schema for `ray up`


def test_dockerfile_builds_python_311_with_the_package():
    text = (PLATFORM / "image" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11", text, re.MULTILINE)
    assert "pip install -e ." in text
    assert "WORKDIR /app" in text


@pytest.mark.parametrize("path", ["image/Dockerfile", "cluster-up.sh"])
def test_every_cluster_this_project_starts_runs_the_proxy_guard(path):
    # The Dockerfile's environment is the KubeRay pods' and the cluster launcher's nodes'.
    (name, value), = PROXY_ENVIRONMENT.items()
    assert re.search(rf"\b{name}={re.escape(value)}\b", (PLATFORM / path).read_text())


@pytest.mark.parametrize("script", ["cluster-up.sh", "cluster-down.sh"])
def test_cluster_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(PLATFORM / script)], check=True)


def test_a_dashboard_url_in_ray_address_joins_the_cluster_through_its_gcs(monkeypatch):
    monkeypatch.delenv(GCS_ADDRESS_ENV, raising=False)
    assert cluster_address("127.0.0.1:6379") == "127.0.0.1:6379"
    assert cluster_address("auto") == "auto"
    # What runs/cluster/env exports: the cluster on this machine.
    assert cluster_address("http://127.0.0.1:8265") == "auto"
    with pytest.raises(ValueError, match="http://10.0.0.5:8265 is a dashboard URL.*--address or RAY_GCS_ADDRESS"):
        cluster_address("http://10.0.0.5:8265")
    monkeypatch.setenv(GCS_ADDRESS_ENV, "10.0.0.5:6379")
    assert cluster_address("http://10.0.0.5:8265") == "10.0.0.5:6379"
    env = (PLATFORM / "cluster-up.sh").read_text()
    assert "export RAY_GCS_ADDRESS=127.0.0.1:$RAY_PORT" in env


def cluster_env(ports: dict[str, int], state_dir: Path, temp_dir: str) -> dict[str, str]:
    return {**os.environ, **{name: str(port) for name, port in ports.items()}, "NUM_CPUS": "1",
            "STATE_DIR": str(state_dir), "RAY_TEMP_DIR": temp_dir, "VENV": str(Path(sys.executable).parents[1])}


def test_cluster_up_listens_on_the_loopback_only_and_cluster_down_leaves_no_process(tmp_path):
    ports = {name: free_port() for name in PORT_ROLES}
    # Short: Ray's socket paths under the temp dir must stay within the 107 characters of a Unix socket path.
    temp_dir = tempfile.mkdtemp(prefix="ray-t", dir="/tmp")
    env = cluster_env(ports, tmp_path / "cluster", temp_dir)
    state_file = tmp_path / "cluster" / "state.json"
    up = subprocess.run(["bash", str(PLATFORM / "cluster-up.sh")], env=env, capture_output=True, text=True,
                        timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = ClusterState.load(state_file)
        cluster = members(state)
        commands = " ".join(p.command for p in cluster.values())
        assert {"gcs_server", "raylet", "dashboard.py"} <= {p.name for p in cluster.values()}
        assert "ray.util.client.server" in commands  # the one `ray start` leaves without the temp dir's name
        sockets = listeners(cluster)
        assert all(s.loopback for s in sockets), [s for s in sockets if not s.loopback]
        ray_ports = {ports[p] for p in ("RAY_PORT", "DASHBOARD_PORT", "AGENT_PORT", "CLIENT_PORT")}
        assert ray_ports <= {s.port for s in sockets}
        assert f"{len(sockets)} listening sockets, every one on the loopback" in up.stdout
        assert f"export DIEN_SERVE_PORT={ports['SERVE_PORT']}" in (tmp_path / "cluster" / "env").read_text()
        again = subprocess.run(["bash", str(PLATFORM / "cluster-up.sh")], env=env, capture_output=True, text=True,
                               timeout=60)
        assert again.returncode == 2 and "is running; 'make cluster-down' first" in again.stderr
        beside = cluster_env({**ports, "RAY_PORT": free_port()}, tmp_path / "other", temp_dir + "-b")
        taken = subprocess.run(["bash", str(PLATFORM / "cluster-up.sh")], env=beside, capture_output=True,
                               text=True, timeout=60)
        assert taken.returncode == 2
        assert f"port {ports['DASHBOARD_PORT']} (DASHBOARD_PORT: the dashboard) is taken" in taken.stderr
    finally:
        down = subprocess.run(["bash", str(PLATFORM / "cluster-down.sh")], env=env, capture_output=True, text=True,
                              timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert down.returncode == 0 and "none left" in down.stdout, down.stdout + down.stderr
    assert not members(state) and not state_file.exists()
    again = subprocess.run(["bash", str(PLATFORM / "cluster-down.sh")], env=env, capture_output=True, text=True,
                           timeout=60)
    assert "no cluster of platform/cluster-up.sh is running from here" in again.stdout
