"""Two Ray nodes, then one (dien.bench.multinode_check in its own process, its own two-node Ray): training spread
over both nodes resumes from its checkpoint on the head, serving with a replica per node keeps answering."""
import json
import subprocess
import sys


def test_losing_a_node_resumes_training_and_drops_no_request(prepared_dataset, tmp_path):
    out = tmp_path / "multinode.json"
    done = subprocess.run([sys.executable, "-m", "dien.bench.multinode_check", "--data", str(prepared_dataset.path),
                           "--threads", "2", "--serve-seconds", "6", "--timeout", "300", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    training, serving = report["training"], report["serving"]
    assert training["workers_per_node_before"] == [1, 1]
    assert training["checkpoint_step_at_removal"] > 0
    assert training["resumed_from_step"] >= training["checkpoint_step_at_removal"]
    assert training["epoch"] == 2  # both epochs finished, one of them after the loss
    assert serving["replica_nodes_before"] == {"Ingress": 2, "Scorer": 2}
    assert serving["replicas_after"] == {"Ingress": 1, "Scorer": 1}
    assert serving["failures"] == {} and serving["requests_after_removal"] > 0
