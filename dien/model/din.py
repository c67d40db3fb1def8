"""DIN (Zhou et al., KDD 2018): target attention over the behavior embeddings, no order."""
from __future__ import annotations

import torch
from torch import Tensor

from dien.model.attention import MLPAttention
from dien.model.base import CTRModel, HistoryEncoding
from dien.model.config import ModelConfig
from dien.model.layers import MLP, BehaviorEmbedding
from dien.model.pooling import embed_history


class DIN(CTRModel):
    """MLP over [target, attention-pooled history] (``history_sum=True`` adds the official code's sum and
    target * sum), DIN's activation unit for attention."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embedding = BehaviorEmbedding(config.n_items, config.n_cats, config.item_dim, config.cat_dim,
                                           config.embedding_std)
        dim = self.embedding.dim
        self.attention = MLPAttention(dim, dim)
        self.history_sum = config.history_sum
        self.mlp = MLP((4 if self.history_sum else 2) * dim, config.mlp_dims, config.activation)
        self.score_reads = ("behaviors", "lengths") + (("behavior_sum",) if self.history_sum else ())

    def encode_history(self, hist_item: Tensor, hist_cat: Tensor, lengths: Tensor) -> HistoryEncoding:
        return embed_history(self.embedding, hist_item, hist_cat, lengths)

    def score(self, history: HistoryEncoding, target_item: Tensor, target_cat: Tensor) -> Tensor:
        target = self.embedding(target_item, target_cat)
        att = self.attention(target, history.behaviors, history.lengths)
        attended = torch.bmm(att.unsqueeze(1), history.behaviors).squeeze(1)
        pooled = [history.behavior_sum, target * history.behavior_sum] if self.history_sum else []
        return self.mlp(torch.cat([target, *pooled, attended], dim=-1))
