"""The Embedding & MLP baselines of the DIEN paper's Table 2, each on the sum-pooled history: BaseModel,
Wide&Deep (Cheng et al., 2016) and PNN (Qu et al., 2016), the last two as their own papers define them."""
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


def distinct_categories(hist_cat: Tensor, lengths: Tensor) -> Tensor:
    """hist_cat [B, T], lengths [B] -> [B, T]: each row's distinct categories first (descending), then zeros, so a
    row's first ``lengths`` entries hold all of them."""
    present = hist_cat * valid_mask(lengths, hist_cat.shape[1])
    ordered = present.sort(dim=1, descending=True).values
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return ordered.masked_fill(repeated, 0)


class SumPoolingModel(CTRModel):
    """BaseModel: an MLP over [target, sum of the history's behavior embeddings]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embedding = BehaviorEmbedding(config.n_items, config.n_cats, config.item_dim, config.cat_dim,
                                           config.embedding_std)
        self.mlp = MLP(2 * self.embedding.dim, config.mlp_dims, config.activation)
        self.score_reads = ("behavior_sum",)

    def encode_history(self, hist_item: Tensor, hist_cat: Tensor, lengths: Tensor) -> HistoryEncoding:
        return embed_history(self.embedding, hist_item, hist_cat, lengths)

    def score(self, history: HistoryEncoding, target_item: Tensor, target_cat: Tensor) -> Tensor:
        target = self.embedding(target_item, target_cat)
        return self.mlp(torch.cat([target, history.behavior_sum], dim=-1))


class CrossFeatureLinear(nn.Module):
    """The wide part of Wide&Deep: a linear model over sparse binary features, the target's item and category and
    the cross products "target item AND history holds category c" and "target category AND history holds
    category c", hashed into ``buckets`` weights (Cheng et al.'s cross-product transformation; ids hashed, not
    tokens, so the crosses keep their meaning while ids do not move)."""

    KINDS = 2
    PRIME = (1 << 31) - 1
    MULTIPLIER, OFFSET, STRIDE = 1_103_515_245, 12_345, 1_000_003
    """Universal hashing ((a x + b) mod p) mod buckets of x = target * STRIDE + category (a prime stride: a power
    of two would only rotate bits mod the Mersenne prime p and crowd the buckets). Every product stays below
    2**62, so no step overflows int64 and the ONNX export computes the same buckets."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.buckets = config.wide_buckets
        self.items = nn.Embedding(config.n_items, 1, padding_idx=0)
        self.cats = nn.Embedding(config.n_cats, 1, padding_idx=0)
        self.crosses = nn.Embedding(config.wide_buckets, 1)
        for table in (self.items, self.cats, self.crosses):
            nn.init.zeros_(table.weight)

    def cross_index(self, kind: int, target: Tensor, categories: Tensor) -> Tensor:
        """Buckets [B, T] of the crosses of ``target`` [B] ids with ``categories`` [B, T]."""
        key = ((target.unsqueeze(1) * self.KINDS + kind) * self.STRIDE + categories) % self.PRIME
        return (key * self.MULTIPLIER + self.OFFSET) % self.PRIME % self.buckets

    def forward(self, categories: Tensor, target_item: Tensor, target_cat: Tensor) -> Tensor:
        """categories: [B, T] distinct history categories (0: none); targets [B] -> logits [B]."""
        present = (categories != 0).unsqueeze(2)
        crosses = (self.crosses(self.cross_index(0, target_item, categories))
                   + self.crosses(self.cross_index(1, target_cat, categories)))
        return (self.items(target_item) + self.cats(target_cat)).squeeze(-1) + (crosses * present).sum(dim=(1, 2))


class WideAndDeep(SumPoolingModel):
    """Wide&Deep: BaseModel's MLP (the deep part) plus :class:`CrossFeatureLinear` (the wide part), trained
    jointly, their logits summed."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.wide = CrossFeatureLinear(config)
        self.score_reads = ("behavior_sum", "categories")

    def encode_history(self, hist_item: Tensor, hist_cat: Tensor, lengths: Tensor) -> HistoryEncoding:
        history = super().encode_history(hist_item, hist_cat, lengths)
        history.categories = distinct_categories(hist_cat, lengths)
        return history

    def score(self, history: HistoryEncoding, target_item: Tensor, target_cat: Tensor) -> Tensor:
        return super().score(history, target_item, target_cat) + self.wide(history.categories, target_item,
                                                                           target_cat)


class ProductNetwork(CTRModel):
    """PNN with the inner-product layer (IPNN): four fields, the target item, the target category and the
    history's summed item and category embeddings; the product layer feeds the MLP their embeddings (the linear
    signals z) and the inner products of every pair of fields (p). PNN embeds every field at one width, so
    ``item_dim`` must equal ``cat_dim``."""

    FIELDS = 4

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.item_dim != config.cat_dim:
            raise ValueError(f"pnn takes inner products between fields, so item_dim ({config.item_dim}) must "
                             f"equal cat_dim ({config.cat_dim})")
        self.embedding = BehaviorEmbedding(config.n_items, config.n_cats, config.item_dim, config.cat_dim,
                                           config.embedding_std)
        self.field_dim = config.item_dim
        pairs = torch.triu_indices(self.FIELDS, self.FIELDS, offset=1)
        self.register_buffer("pair_left", pairs[0], persistent=False)
        self.register_buffer("pair_right", pairs[1], persistent=False)
        self.mlp = MLP(self.FIELDS * self.field_dim + pairs.shape[1], config.mlp_dims, config.activation)
        self.score_reads = ("behavior_sum",)

    def encode_history(self, hist_item: Tensor, hist_cat: Tensor, lengths: Tensor) -> HistoryEncoding:
        return embed_history(self.embedding, hist_item, hist_cat, lengths)

    def score(self, history: HistoryEncoding, target_item: Tensor, target_cat: Tensor) -> Tensor:
        target = self.embedding(target_item, target_cat)
        fields = torch.cat([target, history.behavior_sum], dim=-1).unflatten(-1, (self.FIELDS, self.field_dim))
        products = (fields[:, self.pair_left] * fields[:, self.pair_right]).sum(dim=-1)
        return self.mlp(torch.cat([fields.flatten(1), products], dim=-1))
