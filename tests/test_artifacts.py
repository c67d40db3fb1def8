"""The model artifact: identical predictions after a round trip, tampering and missing files refused."""
import json

import pytest
import torch

from dien.artifacts import (MANIFEST, WEIGHTS, ArtifactError, _manifest_digest, load_artifact, save_artifact,
                            sha256_file)
from dien.curves import draw_curves, read_curves
from dien.model import ModelConfig, build_model
from dien.train.loop import iterate_batches


@pytest.fixture()
def artifact(tmp_path, small_dataset):
    torch.manual_seed(0)
    config = ModelConfig(small_dataset.n_items, small_dataset.n_cats, hidden=16)
    model = build_model("dien", config).eval()
    vocab = small_dataset.vocabularies
    path = save_artifact(tmp_path / "model", model, "dien", config, vocab.item, vocab.category, max_len=30,
                         metrics={"auc": 0.5})
    return path, model


def test_round_trip_gives_identical_predictions(artifact, small_dataset):
    path, model = artifact
    loaded = load_artifact(path)
    batch = next(iterate_batches(small_dataset.splits["test"], 64))
    assert torch.equal(loaded.model.predict(batch), model.predict(batch))
    assert loaded.name == "dien" and loaded.max_len == 30 and loaded.manifest["metrics"] == {"auc": 0.5}
    assert loaded.items.tokens.equals(small_dataset.vocabularies.item.tokens)


def test_tampered_weights_are_refused(artifact):
    path, _ = artifact
    state = torch.load(path / WEIGHTS, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1
    torch.save(state, path / WEIGHTS)
    with pytest.raises(ArtifactError, match="weights.pt: sha256 mismatch"):
        load_artifact(path)


def test_tampered_manifest_is_refused(artifact):
    path, _ = artifact
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["metrics"]["auc"] = 0.99
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="manifest was altered"):
        load_artifact(path)


def test_missing_files_are_named(artifact, tmp_path):
    path, _ = artifact
    (path / "vocab" / "item.parquet").unlink()
    with pytest.raises(ArtifactError, match="item.parquet: missing"):
        load_artifact(path)
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        load_artifact(tmp_path / "nowhere")


def test_weights_are_not_arbitrary_pickles(artifact):
    path, _ = artifact

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Payload()}, path / WEIGHTS)
    # Even with checksums that match (a consistent but hostile artifact) the pickle is never executed.
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"][WEIGHTS] = sha256_file(path / WEIGHTS)
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a state dict"):
        load_artifact(path)


def test_training_curves_are_kept_checked_and_drawn(tmp_path, small_dataset):
    config = ModelConfig(small_dataset.n_items, small_dataset.n_cats, hidden=8)
    vocab = small_dataset.vocabularies
    points = [{"epoch": 0.5, "train_loss": 0.69, "global_step": 10},
              {"epoch": 1, "train_loss": 0.6, "valid_auc": 0.71, "valid_gauc": 0.7, "epoch_sample_checksum": "ab12"},
              {"epoch": 2, "train_loss": 0.55, "valid_auc": 0.74, "valid_gauc": 0.72}]
    path = save_artifact(tmp_path / "model", build_model("dien", config), "dien", config, vocab.item, vocab.category,
                         max_len=30, curves=points)
    curve = read_curves(path)
    assert [p["epoch"] for p in curve] == [0.5, 1.0, 2.0] and "epoch_sample_checksum" not in curve[1]
    assert (path / "curves.csv").read_text().splitlines()[0].split(",")[:2] == ["epoch", "global_step"]
    assert (path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert draw_curves({"a": curve, "b": curve[1:]}, tmp_path / "side_by_side.png")
    (path / "curves.json").write_text("[]")
    with pytest.raises(ArtifactError, match="curves.json: sha256 mismatch"):
        load_artifact(path)
