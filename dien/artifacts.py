"""The model bundle on disk: weights, configuration, vocabularies and a manifest of checksums.

    <artifact>/
      manifest.json      model name and config, format version, created time, metrics, dataset hash,
                         sha256 of every other file, and the sha256 of the manifest itself
      weights.pt         the state dict, loaded with ``torch.load(weights_only=True)`` (no arbitrary pickles)
      vocab/item.parquet, vocab/category.parquet   the vocabularies the model was trained with
      vocab/item_category.parquet                  the item table: each item id's category id (optional)
      curves.json, curves.csv, training_curves.png the training curve (optional, dien.curves)

``load_artifact`` verifies every checksum before it builds anything and names the file that fails.
"""
from __future__ import annotations

import hashlib
import json
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
import torch

from dien.curves import write_curves
from dien.data.vocab import Vocabulary
from dien.model import CTRModel, ModelConfig, build_model

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
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
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, staging / WEIGHTS)
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
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def verify_artifact(path: str | Path) -> dict[str, Any]:
    """The manifest of a complete, unaltered artifact; raises :class:`ArtifactError` naming what is wrong."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path}: missing (is {path} a model artifact?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{manifest_path}: not valid JSON ({error})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{manifest_path}: format_version {manifest.get('format_version')!r}, "
                            f"this code reads {FORMAT_VERSION}")
    if manifest.get("manifest_sha256") != _manifest_digest(manifest):
        raise ArtifactError(f"{manifest_path}: checksum mismatch, the manifest was altered")
    for name, expected in manifest["files"].items():
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing from the artifact")
        if sha256_file(file) != expected:
            raise ArtifactError(f"{file}: sha256 mismatch, the file was altered or is incomplete")
    return manifest


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> ModelArtifact:
    """Verify, then build the model from its manifest and load its weights (``weights_only=True``)."""
    path = Path(path)
    manifest = verify_artifact(path)
    config = ModelConfig.from_dict(manifest["model"]["config"])
    model = build_model(manifest["model"]["name"], config)
    try:
        state = torch.load(path / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (pickle.UnpicklingError, RuntimeError) as error:
        raise ArtifactError(f"{path / WEIGHTS}: not a state dict of {manifest['model']['name']} ({error})") from None
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
