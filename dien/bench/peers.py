"""DeepCTR-Torch's DIEN and DIN, the library a team would pip-install instead, trained on our samples.

An optional extra (``pip install -e '.[peers]'``), used only by the benchmarks. The peers get exactly our
train/valid/test rows: the same targets, histories (left-aligned, zero-padded to ``max_len``) and, for DIEN's
auxiliary loss, the same sampled negative behaviors. Their settings are DeepCTR-Torch's defaults but for what
the budget fixes (embedding width, MLP widths, epochs, batch size): DIEN with ``gru_type="AUGRU"`` and
``use_negsampling=True`` (DIEN with its auxiliary loss), Adam at DeepCTR's 1e-3. Metrics come from the same
code as ours (``dien.train.metrics``).
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dien.data.batch import pad_lists
from dien.train.loop import Predictions

logger = logging.getLogger(__name__)

PEERS = {"deepctr_dien": "DeepCTR-Torch DIEN (AUGRU, auxiliary loss)", "deepctr_din": "DeepCTR-Torch DIN"}


@dataclass(frozen=True)
class PeerConfig:
    embedding_dim: int = 18
    """Width of the item and of the category embedding (ours: item_dim = cat_dim = 18)."""
    mlp_dims: tuple[int, ...] = (200, 80)
    aux_weight: float = 1.0
    """DIEN's alpha (DeepCTR's default)."""
    epochs: int = 2
    patience: int | None = None
    """Early stopping on validation AUC, keeping the best epoch's weights (None: train every epoch)."""
    batch_size: int = 128
    eval_batch_size: int = 1024
    lr: float | None = None
    """Adam's learning rate; None keeps DeepCTR-Torch's default (1e-3)."""


def available() -> bool:
    try:
        import deepctr_torch  # noqa: F401
    except ImportError:
        return False
    return True


def inputs(table: pa.Table, max_len: int, negatives: bool) -> dict[str, np.ndarray]:
    """DeepCTR-Torch's input dict of sample rows: targets, histories padded to ``max_len``, their lengths."""
    def padded(column: str) -> np.ndarray:
        values, _ = pad_lists(table.column(column))
        out = np.zeros((table.num_rows, max_len), dtype=np.int64)
        out[:, :values.shape[1]] = values
        return out

    features = {"item_id": table.column("target_item").to_numpy(), "cate_id": table.column("target_cat").to_numpy(),
                "hist_item_id": padded("hist_item"), "hist_cate_id": padded("hist_cat"),
                "seq_length": pad_lists(table.column("hist_item"))[1]}
    if negatives:
        features.update(neg_hist_item_id=padded("neg_hist_item"), neg_hist_cate_id=padded("neg_hist_cat"))
    return features


def feature_columns(n_items: int, n_cats: int, max_len: int, dim: int, negatives: bool) -> list[Any]:
    """DeepCTR-Torch's feature columns of our samples: target item and category, their histories (sharing the
    targets' embeddings) and, with ``negatives``, the sampled negative histories of DIEN's auxiliary loss."""
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat

    columns = [SparseFeat("item_id", n_items, embedding_dim=dim), SparseFeat("cate_id", n_cats, embedding_dim=dim)]
    sequences = ["hist_item_id", "hist_cate_id"] + (["neg_hist_item_id", "neg_hist_cate_id"] if negatives else [])
    for sequence in sequences:
        shared, size = ("item_id", n_items) if "item" in sequence else ("cate_id", n_cats)
        columns.append(VarLenSparseFeat(SparseFeat(sequence, size, embedding_dim=dim, embedding_name=shared),
                                        maxlen=max_len, length_name="seq_length"))
    return columns


def build(name: str, n_items: int, n_cats: int, max_len: int, config: PeerConfig, seed: int) -> Any:
    """The DeepCTR-Torch model ``name`` (a key of ``PEERS``), compiled with Adam and binary cross-entropy."""
    from deepctr_torch.models import DIEN, DIN

    columns = feature_columns(n_items, n_cats, max_len, config.embedding_dim, negatives=name == "deepctr_dien")
    behaviors = ["item_id", "cate_id"]
    if name == "deepctr_dien":
        model = DIEN(columns, behaviors, gru_type="AUGRU", use_negsampling=True, alpha=config.aux_weight,
                     dnn_hidden_units=config.mlp_dims, seed=seed, device="cpu")
    elif name == "deepctr_din":
        model = DIN(columns, behaviors, dnn_hidden_units=config.mlp_dims, seed=seed, device="cpu")
    else:
        raise ValueError(f"unknown peer model {name!r}; choose one of {', '.join(PEERS)}")
    model.compile("adam" if config.lr is None else torch.optim.Adam(model.parameters(), lr=config.lr),
                  "binary_crossentropy")
    return model


def quiet_fit(model: Any, features: dict[str, np.ndarray], labels: np.ndarray, batch_size: int) -> None:
    """One epoch of DeepCTR-Torch's own training loop, in a random order (its ``fit`` prints its device and
    sample counts on every call: they are swallowed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        model.fit(features, labels, batch_size=batch_size, epochs=1, verbose=0, shuffle=True)


def _predict(model: Any, table: pa.Table, features: dict[str, np.ndarray], batch_size: int) -> Predictions:
    probabilities = model.predict(features, batch_size=batch_size).reshape(-1)
    return Predictions(table.column("user").to_numpy(), table.column("label").to_numpy().astype(np.float32),
                       probabilities)


def train_peer(name: str, splits: dict[str, pa.Table], n_items: int, n_cats: int, max_len: int, config: PeerConfig,
               seed: int) -> dict[str, Any]:
    """Train peer ``name`` on ``splits`` (train/valid/test sample tables); its test metrics (of the best
    validation epoch with ``patience``), training samples/s and epochs, like our runs report them."""
    torch.manual_seed(seed)
    model = build(name, n_items, n_cats, max_len, config, seed)
    negatives = name == "deepctr_dien"
    train = inputs(splits["train"], max_len, negatives)
    labels = splits["train"].column("label").to_numpy().astype(np.float32)
    valid = inputs(splits["valid"], max_len, negatives)
    best_auc, best_epoch, best_state, seconds, epochs = -1.0, 0, None, 0.0, 0
    for epoch in range(config.epochs):
        started = time.perf_counter()
        quiet_fit(model, train, labels, config.batch_size)
        seconds += time.perf_counter() - started
        epochs += 1
        valid_auc = _predict(model, splits["valid"], valid, config.eval_batch_size).metrics()["auc"]
        logger.info("%s seed %d epoch %d: valid auc %.4f", name, seed, epoch + 1, valid_auc)
        if valid_auc > best_auc:
            best_auc, best_epoch = valid_auc, epoch + 1
            best_state = copy.deepcopy(model.state_dict()) if config.patience else None
        if config.patience and epoch + 1 - best_epoch >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    test = _predict(model, splits["test"], inputs(splits["test"], max_len, negatives), config.eval_batch_size)
    return {**test.metrics(), "valid_auc": best_auc if config.patience else valid_auc,
            "samples_per_second": epochs * splits["train"].num_rows / seconds, "train_seconds": seconds,
            "epochs": epochs, "best_epoch": best_epoch if config.patience else None, "seed": seed}
