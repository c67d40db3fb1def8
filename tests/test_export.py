"""ONNX export: ONNX Runtime's scores equal the model's, a failed check leaves nothing behind."""
import json

import numpy as np
import pytest
import torch

from dien.artifacts import load_artifact, save_artifact
from dien.export import (MODEL_FILE, SIGNATURE_FILE, ExportError, example_inputs, export_onnx, model_probabilities,
                         runtime_probabilities)
from dien.model import ModelConfig, build_model

pytest.importorskip("onnxruntime")
MAX_LEN = 6


def trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Weights far from their initialization (BatchNorm statistics included), so that every path matters."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for tensor in model.parameters():
            tensor.add_(0.3 * torch.randn(tensor.shape, generator=generator))
        for name, tensor in model.named_buffers():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0, generator=generator)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 0.3, generator=generator)
    return model


@pytest.fixture(scope="module", params=["dien", "din", "wide_deep"])
def artifact(request, tmp_path_factory, small_dataset):
    torch.manual_seed(0)
    config = ModelConfig(small_dataset.n_items, small_dataset.n_cats, hidden=8, item_dim=4, cat_dim=4,
                         mlp_dims=(16, 8), aux_dims=(8,))
    model = trained_looking(build_model(request.param, config)).eval()
    vocab = small_dataset.vocabularies
    path = save_artifact(tmp_path_factory.mktemp(request.param) / "model", model, request.param, config, vocab.item,
                         vocab.category, max_len=MAX_LEN, item_categories=vocab.item_category)
    return load_artifact(path)


def test_exported_scores_equal_the_models(artifact, tmp_path):
    report = export_onnx(artifact, tmp_path / "export", check_rows=64)
    assert report.max_abs_diff <= 1e-5
    # Rows the export was not checked on, another batch size (B is dynamic), every length 0..max_len.
    inputs = example_inputs(artifact, 37, seed=5)
    ours = model_probabilities(artifact.model, inputs)
    exported = runtime_probabilities(tmp_path / "export" / MODEL_FILE, inputs)
    assert exported.shape == (37,)
    np.testing.assert_allclose(exported, ours, atol=1e-5)
    assert ours.std() > 1e-3, "the scores must depend on the inputs for the comparison to mean anything"
    signature = json.loads((tmp_path / "export" / SIGNATURE_FILE).read_text())
    assert signature["inputs"]["hist_item"]["shape"] == ["B", MAX_LEN]
    assert signature["artifact"]["version"] == artifact.manifest["version"]
    assert (tmp_path / "export" / "vocab" / "item.parquet").exists()
    assert (tmp_path / "export" / "vocab" / "item_category.parquet").exists()


def test_an_existing_directory_is_not_overwritten(artifact, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(ExportError, match="exists"):
        export_onnx(artifact, tmp_path / "taken")


def test_scores_that_differ_fail_the_export_and_leave_nothing(artifact, tmp_path):
    with pytest.raises(ExportError, match="differ from the model's"):
        export_onnx(artifact, tmp_path / "export", check_rows=16, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []
