"""The one batch format every model consumes, and its collation from Arrow sample rows."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

HISTORY_COLUMNS = ("hist_item", "hist_cat", "neg_hist_item", "neg_hist_cat")


@dataclass
class Batch:
    """Samples as padded tensors. Histories are left-aligned: step t of row b is valid iff t < lengths[b].

    user: [B] int64; hist_item, hist_cat, neg_hist_item, neg_hist_cat: [B, T] int64 (0 = padding);
    lengths: [B] int64; target_item, target_cat: [B] int64; label: [B] float32 (1 = click).
    """

    user: Tensor
    hist_item: Tensor
    hist_cat: Tensor
    neg_hist_item: Tensor
    neg_hist_cat: Tensor
    lengths: Tensor
    target_item: Tensor
    target_cat: Tensor
    label: Tensor

    def __len__(self) -> int:
        return self.label.shape[0]

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})


def pad_lists(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A list<int> column as a left-aligned zero-padded matrix [N, max length] and its lengths [N]."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = np.diff(column.offsets.to_numpy()).astype(np.int64)
    return pad_flat(column.flatten().to_numpy(zero_copy_only=False), lengths), lengths


def pad_flat(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Rows of ``lengths`` [N] laid end to end in ``values`` [sum of lengths] as a left-aligned zero-padded
    int64 matrix [N, max length]."""
    padded = np.zeros((len(lengths), int(lengths.max(initial=0))), dtype=np.int64)
    padded[np.arange(padded.shape[1]) < lengths[:, None]] = values
    return padded


def collate(rows: pa.Table | pa.RecordBatch) -> Batch:
    """Sample rows (the Parquet schema of ``dien.data.samples``) as one :class:`Batch`."""
    history = {}
    lengths = None
    for name in HISTORY_COLUMNS:
        padded, column_lengths = pad_lists(rows.column(name))
        if lengths is None:
            lengths = column_lengths
        elif not np.array_equal(lengths, column_lengths):
            raise ValueError(f"column {name!r} has different lengths from hist_item in the same rows")
        history[name] = torch.from_numpy(padded)

    def scalar(name: str, dtype: torch.dtype) -> Tensor:
        return torch.tensor(rows.column(name).to_numpy(zero_copy_only=False), dtype=dtype)

    return Batch(
        user=scalar("user", torch.int64),
        lengths=torch.from_numpy(lengths),
        target_item=scalar("target_item", torch.int64),
        target_cat=scalar("target_cat", torch.int64),
        label=scalar("label", torch.float32),
        **history,
    )
