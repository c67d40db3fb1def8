"""An artifact's scoring path as ONNX, for servers that are not Python (ONNX Runtime from C++, Java, C#, Go, JS).

    <export>/
      model.onnx       hist_item, hist_cat [B, T] int64 (T = the artifact's max_len; each row's behaviors oldest
                       first, left-aligned, 0-padded), lengths [B] int64, target_item, target_cat [B] int64
                       -> probability [B] float32; B is dynamic
      signature.json   those names, shapes and dtypes, the id conventions, the artifact's name, version and
                       manifest hash, and what the export was verified against
      vocab/           the artifact's vocabularies (raw id -> model id) and item table, as Parquet

ONNX rather than TorchScript: TorchScript is deprecated in favour of ``torch.export``, and ONNX Runtime is a
maintained inference runtime with bindings for most server languages. The graph is traced through the
reference recurrence (plain tensor ops, unrolled over the T steps; the fast backends are opaque autograd
Functions), so one row of the export computes exactly what ``model.predict`` does for it. A row per candidate:
a server repeats the user's history for each of the request's candidates.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dien.artifacts import ITEM_TABLE, VOCAB_FILES, ModelArtifact
from dien.kernels import use_backend
from dien.model import CTRModel

MODEL_FILE = "model.onnx"
SIGNATURE_FILE = "signature.json"
INPUT_NAMES = ("hist_item", "hist_cat", "lengths", "target_item", "target_cat")
OUTPUT_NAME = "probability"


class ExportError(Exception):
    """An export that cannot be written, or whose runtime scores differ from the model's."""


class ScoringPath(nn.Module):
    """``model.predict`` as a module of plain tensors (what ``torch.export`` traces)."""

    def __init__(self, model: CTRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, hist_item: Tensor, hist_cat: Tensor, lengths: Tensor, target_item: Tensor,
                target_cat: Tensor) -> Tensor:
        """hist_item, hist_cat: [B, T] int64; lengths, target_item, target_cat: [B] int64 -> probability [B]."""
        history = self.model.encode_history(hist_item, hist_cat, lengths)
        return torch.sigmoid(self.model.score(history, target_item, target_cat))


def example_inputs(artifact: ModelArtifact, rows: int, seed: int = 0) -> dict[str, Tensor]:
    """``rows`` random rows of the model's inputs: ids inside its vocabularies (2 on: 0 is padding, 1
    out-of-vocabulary, both covered by a few ids), every history length from 0 to max_len."""
    generator = torch.Generator().manual_seed(seed)
    config, steps = artifact.config, artifact.max_len
    lengths = torch.arange(rows, dtype=torch.int64) % (steps + 1)
    valid = torch.arange(steps).unsqueeze(0) < lengths.unsqueeze(1)

    def ids(high: int, *shape: int) -> Tensor:
        return torch.randint(1, max(high, 2), shape, generator=generator)

    return {"hist_item": ids(config.n_items, rows, steps) * valid, "hist_cat": ids(config.n_cats, rows, steps) * valid,
            "lengths": lengths, "target_item": ids(config.n_items, rows), "target_cat": ids(config.n_cats, rows)}


def model_probabilities(model: CTRModel, inputs: dict[str, Tensor]) -> np.ndarray:
    """What our own inference path (the default kernels) gives for ``inputs`` [B]."""
    with torch.no_grad():
        return ScoringPath(model)(*(inputs[name] for name in INPUT_NAMES)).numpy()


@dataclass(frozen=True)
class ExportReport:
    path: Path
    seconds: float
    rows_checked: int
    max_abs_diff: float
    """Largest |ONNX Runtime - model.predict| over the checked rows."""


def export_onnx(artifact: ModelArtifact, out: str | Path, check_rows: int = 256, tolerance: float = 1e-5,
                opset: int = 18) -> ExportReport:
    """Write ``artifact``'s scoring path to ``out`` (the directory above), load it back with ONNX Runtime and
    compare its probabilities with ``model.predict`` on ``check_rows`` rows; raises :class:`ExportError` when they
    differ by more than ``tolerance``, leaving nothing at ``out``."""
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out} exists; choose a new directory or remove it")
    started = time.perf_counter()
    model = artifact.model.eval()
    inputs = example_inputs(artifact, check_rows)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "vocab").mkdir(parents=True)
    try:
        batch = torch.export.Dim("batch", min=1)
        with torch.no_grad(), use_backend("reference"):
            program = torch.onnx.export(ScoringPath(model), tuple(inputs[name] for name in INPUT_NAMES),
                                        dynamo=True, input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                                        dynamic_shapes=tuple({0: batch} for _ in INPUT_NAMES), opset_version=opset,
                                        # ONNX Runtime optimizes the graph when it loads it; the exporter's
                                        # own pass doubled the export time of the unrolled recurrences.
                                        optimize=False, verbose=False)
        program.save(str(staging / MODEL_FILE))
        max_diff = float(np.abs(runtime_probabilities(staging / MODEL_FILE, inputs)
                                - model_probabilities(model, inputs)).max())
        if not max_diff <= tolerance:
            raise ExportError(f"the exported model's probabilities differ from the model's by {max_diff:.3g} "
                              f"(tolerance {tolerance:g}) on {check_rows} rows")
        for relative in [*VOCAB_FILES.values(), ITEM_TABLE]:
            if (artifact.path / relative).exists():
                shutil.copy2(artifact.path / relative, staging / relative)
        seconds = time.perf_counter() - started
        (staging / SIGNATURE_FILE).write_text(json.dumps(signature(artifact, check_rows, max_diff, opset), indent=2)
                                              + "\n")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(out, seconds, check_rows, max_diff)


def runtime_probabilities(model_file: str | Path, inputs: dict[str, Tensor | np.ndarray]) -> np.ndarray:
    """The exported model's probabilities [B] under ONNX Runtime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    feeds = {name: np.asarray(inputs[name], dtype=np.int64) for name in INPUT_NAMES}
    return session.run([OUTPUT_NAME], feeds)[0]


def signature(artifact: ModelArtifact, rows_checked: int, max_abs_diff: float, opset: int) -> dict:
    steps = artifact.max_len
    return {
        "format": "onnx", "opset": opset, "model_file": MODEL_FILE,
        "artifact": {"name": artifact.name, "version": artifact.manifest.get("version"),
                     "manifest_sha256": artifact.manifest.get("manifest_sha256"), "path": str(artifact.path)},
        "inputs": {
            "hist_item": {"dtype": "int64", "shape": ["B", steps]},
            "hist_cat": {"dtype": "int64", "shape": ["B", steps]},
            "lengths": {"dtype": "int64", "shape": ["B"]},
            "target_item": {"dtype": "int64", "shape": ["B"]},
            "target_cat": {"dtype": "int64", "shape": ["B"]},
        },
        "outputs": {OUTPUT_NAME: {"dtype": "float32", "shape": ["B"]}},
        "ids": "model ids from vocab/*.parquet: 0 pads a history, 1 is out-of-vocabulary; a history holds the "
               f"user's {steps} most recent behaviors, oldest first, left-aligned, lengths[b] of them valid",
        "verified": {"runtime": "onnxruntime", "rows": rows_checked, "max_abs_diff": max_abs_diff},
    }
