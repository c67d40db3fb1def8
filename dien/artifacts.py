"""The model bundle on disk: weights, configuration, vocabularies and a manifest of checksums.

    <artifact>/
      manifest.json        model name and config, format version, created time, metrics, dataset hash,
                           sha256 of every other file, the sha256 of the manifest itself and, when keys are
                           configured, its signatures (dien.artifact_signing: HMAC-SHA256, Ed25519)
      weights.safetensors  the state dict as safetensors (a format whose loading never runs code)
      vocab/item.parquet, vocab/category.parquet   the vocabularies the model was trained with
      vocab/item_category.parquet                  the item table: each item id's category id (optional)
      curves.json, curves.csv, training_curves.png the training curve (optional, dien.curves)

``load_artifact`` verifies before it builds anything, and names what fails: the manifest's fields and types,
every file of the directory listed and every listed file inside it (no ``..``, no symlink), every checksum,
the model's sizes against its vocabulary files (a forged size cannot allocate terabytes), and the signatures:
with a key configured (:class:`dien.artifact_signing.ArtifactKeys`), ``save_artifact`` signs the manifest and
``load_artifact`` refuses an artifact that is unsigned or signed with another key. A checksum alone proves that
nothing changed by accident; only a signature proves who wrote the artifact. Format 1 (weights as a
``torch.save`` file, loaded with ``weights_only=True``) still loads.
"""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import safetensors.torch
import torch
from safetensors import SafetensorError

from dien.artifact_signing import SIGNATURE_FIELDS, ArtifactKeys, SignatureError
from dien.curves import write_curves
from dien.data.vocab import RESERVED, Vocabulary
from dien.model import CTRModel, ModelConfig, build_model

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
LEGACY_WEIGHTS = "weights.pt"
"""Format 1's weights: a ``torch.save`` file."""
MAX_WIDTH = 1 << 16
"""The largest embedding, hidden or MLP width a manifest may ask for."""
VOCAB_FILES = {"item": "vocab/item.parquet", "category": "vocab/category.parquet"}
ITEM_TABLE = "vocab/item_category.parquet"


class ArtifactError(Exception):
    """An artifact that is missing, incomplete or altered."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_digest(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256" and k not in SIGNATURE_FIELDS}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def configured_keys() -> ArtifactKeys:
    """The signing and verification keys of this process's environment (:mod:`dien.artifact_signing`)."""
    try:
        return ArtifactKeys.from_environment()
    except SignatureError as error:
        raise ArtifactError(str(error)) from None


@dataclass
class ModelArtifact:
    path: Path
    manifest: dict[str, Any]
    model: CTRModel
    """The model in eval mode."""
    items: Vocabulary
    categories: Vocabulary
    item_categories: np.ndarray | None = None
    """[len(items)] int32 category id of each item id (0 for the reserved ids and unknown categories); None for
    an artifact saved without its dataset's item table."""

    @property
    def name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.manifest["model"]["config"])

    @property
    def max_len(self) -> int:
        return int(self.manifest["max_len"])


def save_artifact(
    path: str | Path,
    model: CTRModel,
    name: str,
    config: ModelConfig,
    items: Vocabulary,
    categories: Vocabulary,
    max_len: int,
    metrics: dict[str, float] | None = None,
    dataset_sha256: str | None = None,
    extra: dict[str, Any] | None = None,
    item_categories: np.ndarray | None = None,
    curves: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write the artifact to ``path`` atomically (a complete directory appears, or nothing changes).

    ``curves``: the training curve (``dien.curves``: a point per epoch and per reported step), written as
    curves.json, curves.csv and training_curves.png.

    ``extra`` holds producer-specific facts (e.g. distillation's teacher and lambda). ``item_categories``: the
    dataset's item table ([len(items)] category ids, ``Vocabularies.item_category``), which lets a server fill
    in and check the categories of the items it scores.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                                    str(staging / WEIGHTS))
        (staging / "vocab").mkdir()
        items.save(staging / VOCAB_FILES["item"])
        categories.save(staging / VOCAB_FILES["category"])
        files = [WEIGHTS, *VOCAB_FILES.values()]
        if item_categories is not None:
            if len(item_categories) != len(items):
                raise ValueError(f"item_categories has {len(item_categories)} rows for {len(items)} item ids")
            pq.write_table(pa.table({"category": np.asarray(item_categories, dtype=np.int32)}), staging / ITEM_TABLE)
            files.append(ITEM_TABLE)
        if curves:
            files += [written.name for written in write_curves(staging, curves)]
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": {"name": name, "config": config.to_dict()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "version": None,
            "max_len": max_len,
            "metrics": metrics or {},
            "dataset_sha256": dataset_sha256,
            "vocab_sizes": {"item": len(items), "category": len(categories)},
            "files": {f: sha256_file(staging / f) for f in files},
            **({"extra": extra} if extra else {}),
        }
        manifest["version"] = manifest["files"][WEIGHTS][:12]
        manifest["manifest_sha256"] = _manifest_digest(manifest)
        manifest.update(configured_keys().sign(manifest["manifest_sha256"]))
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _require(condition: bool, where: Path, message: str) -> None:
    if not condition:
        raise ArtifactError(f"{where}: {message}")


def _check_fields(manifest: Any, where: Path) -> None:
    """The manifest's shape: the fields the loader reads, with their types."""
    _require(isinstance(manifest, dict), where, "not a JSON object")
    _require(manifest.get("format_version") in READABLE_FORMATS, where,
             f"format_version {manifest.get('format_version')!r}, this code reads {', '.join(map(str, READABLE_FORMATS))}")
    files, model = manifest.get("files"), manifest.get("model")
    _require(isinstance(files, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()),
             where, "files must map file names to sha256 strings")
    _require(isinstance(model, dict) and isinstance(model.get("name"), str) and isinstance(model.get("config"), dict),
             where, "model must hold a name and a config object")
    max_len = manifest.get("max_len")
    _require(isinstance(max_len, int) and not isinstance(max_len, bool) and 0 < max_len <= MAX_WIDTH, where,
             f"max_len must be an integer in 1..{MAX_WIDTH}, got {max_len!r}")
    _require(isinstance(manifest.get("manifest_sha256"), str), where, "manifest_sha256 missing")


def _check_files(path: Path, manifest: dict[str, Any]) -> None:
    """Every listed file inside the artifact (no ``..``, no symlink), every file of the artifact listed, the
    weights among them, every checksum right."""
    root = path.resolve()
    for required in (weights_file(manifest), *VOCAB_FILES.values()):
        _require(required in manifest["files"], path / MANIFEST, f"{required} is not listed in files")
    for name, expected in manifest["files"].items():
        file = path / name
        parts = Path(name).parts
        _require(not Path(name).is_absolute() and ".." not in parts and name == Path(name).as_posix(), path / MANIFEST,
                 f"files lists {name!r}, which is not a plain path inside the artifact")
        _require(not any((path / Path(*parts[:i + 1])).is_symlink() for i in range(len(parts))), file,
                 "a symlink (an artifact holds its own files)")
        _require(file.is_file(), file, "missing from the artifact")
        _require(file.resolve().is_relative_to(root), file, "outside the artifact")
        _require(sha256_file(file) == expected, file, "sha256 mismatch, the file was altered or is incomplete")
    listed = set(manifest["files"]) | {MANIFEST}
    for file in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
        name = file.relative_to(path).as_posix()
        _require(name in listed, file, "not listed in the manifest (an artifact holds only the files it lists)")


def _check_sizes(path: Path, manifest: dict[str, Any]) -> ModelConfig:
    """The model config, its vocabulary sizes equal to the vocabulary files' and its widths bounded."""
    where = path / MANIFEST
    try:
        config = ModelConfig.from_dict(manifest["model"]["config"])
    except (TypeError, ValueError, KeyError) as error:
        raise ArtifactError(f"{where}: model config: {error}") from None
    for field_name, file in (("n_items", VOCAB_FILES["item"]), ("n_cats", VOCAB_FILES["category"])):
        value = getattr(config, field_name)
        _require(isinstance(value, int) and not isinstance(value, bool), where, f"{field_name} must be an integer")
        rows = pq.ParquetFile(path / file).metadata.num_rows + RESERVED
        _require(value == rows, where, f"model config {field_name} = {value}, but {file} holds {rows} ids")
    widths = [config.item_dim, config.cat_dim, config.hidden, *config.mlp_dims, *(config.aux_dims or ())]
    _require(all(isinstance(w, int) and not isinstance(w, bool) and 0 < w <= MAX_WIDTH for w in widths), where,
             f"model widths must be integers in 1..{MAX_WIDTH}, got {widths}")
    return config


def verify_artifact(path: str | Path, keys: ArtifactKeys | None = None) -> dict[str, Any]:
    """The manifest of a complete, unaltered artifact, signed for ``keys`` (default: :func:`configured_keys`);
    raises :class:`ArtifactError` naming what is wrong."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path}: missing (is {path} a model artifact?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{manifest_path}: not valid JSON ({error})") from None
    _check_fields(manifest, manifest_path)
    if manifest["manifest_sha256"] != _manifest_digest(manifest):
        raise ArtifactError(f"{manifest_path}: checksum mismatch, the manifest was altered")
    try:
        (configured_keys() if keys is None else keys).verify(manifest, manifest["manifest_sha256"])
    except SignatureError as error:
        raise ArtifactError(f"{manifest_path}: {error}") from None
    _check_files(path, manifest)
    _check_sizes(path, manifest)
    return manifest


def weights_file(manifest: dict[str, Any]) -> str:
    """The name of the artifact's weights file (format 1: ``weights.pt``)."""
    return WEIGHTS if manifest["format_version"] >= 2 else LEGACY_WEIGHTS


def _load_weights(path: Path, manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    if manifest["format_version"] < 2:
        file = path / LEGACY_WEIGHTS
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise ArtifactError(f"{file}: not a state dict ({error})") from None
        _require(isinstance(state, dict), file, "not a state dict")
        return state
    file = path / WEIGHTS
    try:
        return safetensors.torch.load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:
        raise ArtifactError(f"{file}: not a safetensors file ({error})") from None


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> ModelArtifact:
    """Verify (:func:`verify_artifact`), then build the model from its manifest and load its weights."""
    path = Path(path)
    manifest = verify_artifact(path)
    config = ModelConfig.from_dict(manifest["model"]["config"])
    try:
        model = build_model(manifest["model"]["name"], config)
    except (KeyError, ValueError) as error:
        raise ArtifactError(f"{path / MANIFEST}: {error}") from None
    state = _load_weights(path, manifest)
    weights = path / weights_file(manifest)
    _require(bool(state), weights, "holds no tensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ArtifactError(f"{weights}: not a state dict of {manifest['model']['name']} ({error})") from None
    model.to(device).eval()
    return ModelArtifact(
        path=path,
        manifest=manifest,
        model=model,
        items=Vocabulary.load(path / VOCAB_FILES["item"]),
        categories=Vocabulary.load(path / VOCAB_FILES["category"]),
        item_categories=(pq.read_table(path / ITEM_TABLE).column("category").to_numpy().astype(np.int32)
                         if ITEM_TABLE in manifest["files"] else None),
    )
