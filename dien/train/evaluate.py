"""Offline evaluation of model artifacts on a prepared dataset split."""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np
import pyarrow.parquet as pq
import pyarrow as pa
import torch

from dien.artifacts import ModelArtifact
from dien.data.batch import Batch, collate
from dien.data.dataset_dir import DatasetDir
from dien.data.vocab import RESERVED, Vocabulary
from dien.train.loop import predict


def id_translation(source: Vocabulary, target: Vocabulary) -> torch.Tensor | None:
    """[len(source)] target id of every source id, or None when the vocabularies are identical."""
    if source.tokens.equals(target.tokens):
        return None
    table = np.arange(len(source), dtype=np.int64)
    table[RESERVED:] = target.encode(source.tokens)
    return torch.from_numpy(table)


def _translate(batch: Batch, items: torch.Tensor | None, cats: torch.Tensor | None) -> Batch:
    if items is not None:
        batch = replace(batch, hist_item=items[batch.hist_item], neg_hist_item=items[batch.neg_hist_item],
                        target_item=items[batch.target_item])
    if cats is not None:
        batch = replace(batch, hist_cat=cats[batch.hist_cat], neg_hist_cat=cats[batch.neg_hist_cat],
                        target_cat=cats[batch.target_cat])
    return batch


def evaluate_artifact(artifact: ModelArtifact, dataset: DatasetDir, split: str | Sequence[str] = "test",
                      batch_size: int = 1024) -> dict[str, float]:
    """AUC, GAUC and logloss of ``artifact`` on a whole split (or several together); ids are mapped through the
    artifact's own vocabularies when the dataset was encoded with different ones."""
    splits = [split] if isinstance(split, str) else list(split)
    vocabularies = dataset.vocabularies()
    items = id_translation(vocabularies.item, artifact.items)
    cats = id_translation(vocabularies.category, artifact.categories)

    def batches() -> Iterator[Batch]:
        for file in (file for name in splits for file in dataset.split_files(name)):
            for rows in pq.ParquetFile(file).iter_batches(batch_size=batch_size):
                yield _translate(collate(pa.Table.from_batches([rows])), items, cats)

    return predict(artifact.model, batches()).metrics()
