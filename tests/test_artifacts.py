"""The model artifact: identical predictions after a round trip, tampering and missing files refused."""
import json
import shutil
import subprocess

import pytest
import safetensors.torch
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from dien.artifact_signing import ED25519_FIELD, KEY_ENV, PRIVATE_KEY_FILE_ENV, PUBLIC_KEY_FILE_ENV
from dien.artifacts import (LEGACY_WEIGHTS, MANIFEST, WEIGHTS, ArtifactError, _manifest_digest, load_artifact,
                            save_artifact, sha256_file, verify_artifact)
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
    state = safetensors.torch.load_file(str(path / WEIGHTS))
    first = next(iter(state))
    state[first] = state[first] + 1
    safetensors.torch.save_file(state, str(path / WEIGHTS))
    with pytest.raises(ArtifactError, match="weights.safetensors: sha256 mismatch"):
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


def rewrite(path, edit) -> None:
    """Apply ``edit`` to the manifest and make its checksum consistent again (what a forger does)."""
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def relist(path, name) -> None:
    rewrite(path, lambda m: m["files"].__setitem__(name, sha256_file(path / name)))


def test_weights_are_not_arbitrary_pickles(artifact):
    path, _ = artifact

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    # A pickle under the weights' name, with checksums that match (a consistent but hostile artifact): it is read
    # as safetensors, which cannot run code, and refused.
    torch.save({"x": Payload()}, path / WEIGHTS)
    relist(path, WEIGHTS)
    with pytest.raises(ArtifactError, match="weights.safetensors: not a safetensors file"):
        load_artifact(path)


def test_forged_artifacts_are_refused(artifact, tmp_path):
    path, _ = artifact
    original = tmp_path / "original"
    shutil.copytree(path, original)

    def fresh(name):
        copy = tmp_path / name
        shutil.copytree(original, copy)
        return copy

    outside = fresh("outside")
    rewrite(outside, lambda m: m["files"].__setitem__("../original/weights.safetensors",
                                                       m["files"][WEIGHTS]))
    with pytest.raises(ArtifactError, match="not a plain path inside the artifact"):
        load_artifact(outside)

    unlisted = fresh("unlisted")
    rewrite(unlisted, lambda m: m["files"].pop(WEIGHTS))
    with pytest.raises(ArtifactError, match="weights.safetensors is not listed in files"):
        load_artifact(unlisted)

    extra = fresh("extra")
    (extra / "vocab" / "more.parquet").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="more.parquet: not listed in the manifest"):
        load_artifact(extra)

    linked = fresh("linked")
    (linked / WEIGHTS).unlink()
    (linked / WEIGHTS).symlink_to(original / WEIGHTS)
    with pytest.raises(ArtifactError, match="weights.safetensors: a symlink"):
        load_artifact(linked)

    huge = fresh("huge")
    rewrite(huge, lambda m: m["model"]["config"].__setitem__("n_items", 10**12))
    with pytest.raises(ArtifactError, match="n_items = 1000000000000, but vocab/item.parquet holds"):
        load_artifact(huge)

    wrong_type = fresh("wrong_type")
    rewrite(wrong_type, lambda m: m.__setitem__("max_len", "thirty"))
    with pytest.raises(ArtifactError, match="max_len must be an integer"):
        load_artifact(wrong_type)

    empty = fresh("empty")
    safetensors.torch.save_file({}, str(empty / WEIGHTS))
    relist(empty, WEIGHTS)
    with pytest.raises(ArtifactError, match="holds no tensors"):
        load_artifact(empty)
    assert load_artifact(original).name == "dien"


def test_a_signing_key_refuses_unsigned_and_forged_artifacts(artifact, tmp_path, small_dataset, monkeypatch):
    path, model = artifact  # saved without a key: unsigned
    monkeypatch.setenv(KEY_ENV, "the team's secret")
    with pytest.raises(ArtifactError, match="not signed, and a signing key is configured"):
        load_artifact(path)
    config = ModelConfig(small_dataset.n_items, small_dataset.n_cats, hidden=16)
    vocab = small_dataset.vocabularies
    signed = save_artifact(tmp_path / "signed", model, "dien", config, vocab.item, vocab.category, max_len=30,
                           metrics={"auc": 0.5})
    assert load_artifact(signed).manifest["metrics"] == {"auc": 0.5}
    # A forger who rewrites the metrics and recomputes the manifest's checksum cannot recompute the signature.
    rewrite(signed, lambda m: m["metrics"].__setitem__("auc", 0.99))
    with pytest.raises(ArtifactError, match="signature mismatch"):
        load_artifact(signed)
    monkeypatch.setenv(KEY_ENV, "another key")
    with pytest.raises(ArtifactError, match="signature mismatch"):
        verify_artifact(tmp_path / "signed")


def write_key_pair(directory, name, private_key=None):
    """PEM files of an Ed25519 key pair (or of ``private_key``), as ``openssl genpkey`` writes them."""
    key = private_key or Ed25519PrivateKey.generate()
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def save_small(directory, small_dataset, model):
    config = ModelConfig(small_dataset.n_items, small_dataset.n_cats, hidden=16)
    vocab = small_dataset.vocabularies
    return save_artifact(directory, model, "dien", config, vocab.item, vocab.category, max_len=30,
                         metrics={"auc": 0.5})


def test_an_ed25519_key_pair_signs_for_writers_and_verifies_for_readers(artifact, tmp_path, small_dataset,
                                                                        monkeypatch):
    unsigned, model = artifact
    private, public = write_key_pair(tmp_path, "team")
    monkeypatch.setenv(PRIVATE_KEY_FILE_ENV, str(private))
    signed = save_small(tmp_path / "signed", small_dataset, model)
    assert len(bytes.fromhex(json.loads((signed / MANIFEST).read_text())[ED25519_FIELD])) == 64
    assert load_artifact(signed).manifest["metrics"] == {"auc": 0.5}  # the writer verifies with its own public key

    # A serving machine holds only the public key: it verifies, and cannot sign.
    monkeypatch.delenv(PRIVATE_KEY_FILE_ENV)
    monkeypatch.setenv(PUBLIC_KEY_FILE_ENV, str(public))
    assert load_artifact(signed).name == "dien"
    assert ED25519_FIELD not in json.loads((save_small(tmp_path / "reader", small_dataset, model) / MANIFEST)
                                           .read_text())
    with pytest.raises(ArtifactError, match="no Ed25519 signature, and a public key is configured"):
        load_artifact(unsigned)
    forged = tmp_path / "forged"
    shutil.copytree(signed, forged)
    rewrite(forged, lambda m: m["metrics"].__setitem__("auc", 0.99))
    with pytest.raises(ArtifactError, match="Ed25519 signature mismatch"):
        load_artifact(forged)
    rewrite(forged, lambda m: m.__setitem__(ED25519_FIELD, "not hex"))
    with pytest.raises(ArtifactError, match="Ed25519 signature mismatch"):
        load_artifact(forged)
    _, other_public = write_key_pair(tmp_path, "other")
    monkeypatch.setenv(PUBLIC_KEY_FILE_ENV, str(other_public))
    with pytest.raises(ArtifactError, match="Ed25519 signature mismatch: signed with another key, or forged"):
        verify_artifact(signed)


def test_unreadable_and_wrong_kinds_of_keys_are_named(artifact, tmp_path, monkeypatch):
    path, _ = artifact
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    monkeypatch.setenv(PUBLIC_KEY_FILE_ENV, str(garbage))
    with pytest.raises(ArtifactError, match=f"{garbage} \\(from {PUBLIC_KEY_FILE_ENV}\\): not a PEM public key"):
        load_artifact(path)
    _, rsa_public = write_key_pair(tmp_path, "rsa", generate_private_key(public_exponent=65537, key_size=2048))
    monkeypatch.setenv(PUBLIC_KEY_FILE_ENV, str(rsa_public))
    with pytest.raises(ArtifactError, match="a RSAPublicKey, not an Ed25519 key"):
        load_artifact(path)
    monkeypatch.setenv(PUBLIC_KEY_FILE_ENV, str(tmp_path / "absent.pem"))
    with pytest.raises(ArtifactError, match="absent.pem \\(from DIEN_ARTIFACT_PUBLIC_KEY_FILE\\): cannot be read"):
        load_artifact(path)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_keys_made_by_openssl_sign_and_verify(artifact, tmp_path, small_dataset, monkeypatch):
    _, model = artifact
    private, public = tmp_path / "key.pem", tmp_path / "key.pub.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(private)], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(private), "-pubout", "-out", str(public)], check=True)
    monkeypatch.setenv(PRIVATE_KEY_FILE_ENV, str(private))
    signed = save_small(tmp_path / "signed", small_dataset, model)
    monkeypatch.delenv(PRIVATE_KEY_FILE_ENV)
    monkeypatch.setenv(PUBLIC_KEY_FILE_ENV, str(public))
    assert load_artifact(signed).name == "dien"


def test_format_1_artifacts_still_load(artifact, small_dataset):
    path, model = artifact
    (path / WEIGHTS).unlink()
    torch.save(model.state_dict(), path / LEGACY_WEIGHTS)

    def to_format_1(manifest):
        manifest["format_version"] = 1
        manifest["files"].pop(WEIGHTS)
        manifest["files"][LEGACY_WEIGHTS] = sha256_file(path / LEGACY_WEIGHTS)

    rewrite(path, to_format_1)
    batch = next(iterate_batches(small_dataset.splits["test"], 64))
    assert torch.equal(load_artifact(path).model.predict(batch), model.predict(batch))


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
