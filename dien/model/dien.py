"""DIEN (Zhou et al., AAAI 2019) and its ablations GRU+AIGRU/AGRU/AUGRU and two-layer GRU + attention."""
from __future__ import annotations

import torch
from torch import Tensor

from dien.data.batch import Batch
from dien.model.base import CTRModel, HistoryEncoding
from dien.model.config import ModelConfig
from dien.model.interest import InterestEvolution, InterestExtractor, auxiliary_pairs
from dien.model.layers import MLP, BehaviorEmbedding
from dien.model.pooling import embed_history


class DIEN(CTRModel):
    """Embedding -> interest extractor (GRU, auxiliary loss) -> interest evolution -> MLP on
    [target, final interest], the paper's Fig. 3 (``history_sum=True`` adds the official code's sum and
    target * sum)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embedding = BehaviorEmbedding(config.n_items, config.n_cats, config.item_dim, config.cat_dim,
                                           config.embedding_std)
        dim = self.embedding.dim
        self.extractor = InterestExtractor(dim, config.hidden, config.aux_dims if config.use_aux else None)
        self.evolution = InterestEvolution(config.evolution, config.hidden, dim, config.hidden, config.attention)
        self.history_sum = config.history_sum
        mlp_in = (3 if self.history_sum else 1) * dim + self.evolution.out_dim
        self.mlp = MLP(mlp_in, config.mlp_dims, config.activation)
        self.uses_negatives = config.use_aux
        self.score_reads = ("states", "lengths", "evolution_inputs", "history_rows") + (
            ("behavior_sum",) if self.history_sum else ())

    def encode_history(self, hist_item: Tensor, hist_cat: Tensor, lengths: Tensor) -> HistoryEncoding:
        history = embed_history(self.embedding, hist_item, hist_cat, lengths)
        history.states = self.extractor(history.behaviors, lengths)
        # Scoring shares the projections among a request's candidates; training (one target per history) lets
        # the AUGRU project only the valid steps itself.
        if not torch.is_grad_enabled():
            history.evolution_inputs = self.evolution.project(history.states)
        return history

    def score(self, history: HistoryEncoding, target_item: Tensor, target_cat: Tensor) -> Tensor:
        target = self.embedding(target_item, target_cat)
        interest = self.evolution(history.states, target, history.lengths, history.evolution_inputs,
                                  history.history_rows)
        pooled = [history.behavior_sum, target * history.behavior_sum] if self.history_sum else []
        return self.mlp(torch.cat([target, *pooled, interest], dim=-1))

    def auxiliary_loss(self, history: HistoryEncoding, batch: Batch) -> Tensor | None:
        if not self.uses_negatives:
            return None
        states, behaviors = history.states, history.behaviors
        pairs = auxiliary_pairs(history.lengths, states.shape[1])
        following = pairs + 1
        # Only the negatives of valid pairs are embedded.
        negatives = self.embedding(batch.neg_hist_item.reshape(-1).index_select(0, following),
                                   batch.neg_hist_cat.reshape(-1).index_select(0, following))
        return self.extractor.pair_loss(states.reshape(-1, states.shape[2]).index_select(0, pairs),
                                        behaviors.reshape(-1, behaviors.shape[2]).index_select(0, following),
                                        negatives)
