"""Embedding & MLP baselines of the paper's Table 2: BaseModel, Wide&Deep and PNN (sum-pooled history)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from dien.model.base import CTRModel, HistoryEncoding
from dien.model.config import ModelConfig
from dien.model.layers import MLP, BehaviorEmbedding, valid_mask


def embed_history(embedding: BehaviorEmbedding, hist_item: Tensor, hist_cat: Tensor, lengths: Tensor) -> HistoryEncoding:
    """Behavior embeddings [B, T, E] (zeroed at padded steps) and their sum [B, E]."""
    behaviors = embedding(hist_item, hist_cat) * valid_mask(lengths, hist_item.shape[1]).unsqueeze(2)
    return HistoryEncoding(behaviors=behaviors, lengths=lengths, behavior_sum=behaviors.sum(dim=1))


class SumPoolingModel(CTRModel):
    """BaseModel: MLP over [target, sum of history]. ``product`` adds the target * sum features of the DIEN code's
    PNN baseline; ``wide`` adds the linear part on [target, target * sum] of its Wide&Deep baseline. (Those are
    the baselines of the DIEN paper's Table 2 as its official code builds them; the PNN and Wide&Deep papers'
    own models, with a product layer over every field pair and hashed cross features, are not implemented.)"""

    def __init__(self, config: ModelConfig, product: bool = False, wide: bool = False) -> None:
        super().__init__()
        self.embedding = BehaviorEmbedding(config.n_items, config.n_cats, config.item_dim, config.cat_dim,
                                           config.embedding_std)
        dim = self.embedding.dim
        self.product = product
        self.mlp = MLP(dim * (3 if product else 2), config.mlp_dims, config.activation)
        self.wide = nn.Linear(2 * dim, 1) if wide else None
        self.score_reads = ("behavior_sum",)

    def encode_history(self, hist_item: Tensor, hist_cat: Tensor, lengths: Tensor) -> HistoryEncoding:
        return embed_history(self.embedding, hist_item, hist_cat, lengths)

    def score(self, history: HistoryEncoding, target_item: Tensor, target_cat: Tensor) -> Tensor:
        target = self.embedding(target_item, target_cat)
        pooled = history.behavior_sum
        features = [target, pooled] + ([target * pooled] if self.product else [])
        logits = self.mlp(torch.cat(features, dim=-1))
        if self.wide is not None:
            logits = logits + self.wide(torch.cat([target, target * pooled], dim=-1)).squeeze(-1)
        return logits
