"""Building blocks shared by the models: Dice, the prediction MLP, the embedding of behaviors."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Dice(nn.Module):
    """Data-adaptive activation of DIN: p = sigmoid(BN(x)), out = p * x + (1 - p) * alpha * x.

    Normalizes with batch statistics while training and running statistics at inference, so a served
    score does not depend on the other requests of its batch (the official code always used batch statistics).
    """

    def __init__(self, features: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(features, affine=False, eps=eps)
        self.alpha = nn.Parameter(torch.zeros(features))

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, F] -> [B, F]."""
        # A training batch of one row has no variance; fall back to the running statistics for it.
        use_batch_stats = self.training and x.shape[0] > 1
        if not use_batch_stats and not torch.is_grad_enabled():
            return self._scale_by_running_statistics(x)
        normed = F.batch_norm(
            x,
            self.norm.running_mean,
            self.norm.running_var,
            training=use_batch_stats,
            momentum=self.norm.momentum,
            eps=self.norm.eps,
        )
        p = torch.sigmoid(normed)
        return p * x + (1 - p) * self.alpha * x

    def _scale_by_running_statistics(self, x: Tensor) -> Tensor:
        """The same output without autograd, as x * (alpha + (1 - alpha) p): the normalization is an affine map
        and p is a fresh tensor, so four in-place passes over [B, F] instead of seven (the served MLP's Dice
        cost half its time)."""
        inv_std = torch.rsqrt(self.norm.running_var + self.norm.eps)
        p = torch.addcmul(-self.norm.running_mean * inv_std, x, inv_std).sigmoid_()
        return p.mul_(1 - self.alpha).add_(self.alpha).mul_(x)


def activation(name: str, features: int) -> nn.Module:
    if name == "dice":
        return Dice(features)
    if name == "prelu":
        return nn.PReLU(features)
    if name == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}; choose dice, prelu or sigmoid")


class MLP(nn.Module):
    """Fully connected layers ``in -> dims[0] -> ... -> dims[-1] -> 1``; returns logits [B]."""

    def __init__(self, in_features: int, dims: tuple[int, ...], act: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for dim in dims:
            layers += [nn.Linear(width, dim), activation(act, dim)]
            width = dim
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in_features] -> logits [...]."""
        leading = x.shape[:-1]
        return self.layers(x.reshape(-1, x.shape[-1])).reshape(leading)


class BehaviorEmbedding(nn.Module):
    """Item and category embeddings, concatenated. Id 0 is padding (a zero vector), id 1 out-of-vocabulary."""

    def __init__(self, n_items: int, n_cats: int, item_dim: int, cat_dim: int, std: float | None = None) -> None:
        """``std``: the tables start as N(0, std^2) (None: PyTorch's N(0, 1)); the padding row stays zero."""
        super().__init__()
        self.items = nn.Embedding(n_items, item_dim, padding_idx=0)
        self.cats = nn.Embedding(n_cats, cat_dim, padding_idx=0)
        if std is not None:
            for table in (self.items, self.cats):
                nn.init.normal_(table.weight, std=std)
                table._fill_padding_idx_with_zero()
        self.dim = item_dim + cat_dim

    def forward(self, items: Tensor, cats: Tensor) -> Tensor:
        """items, cats: [...] int64 -> [..., item_dim + cat_dim]."""
        return torch.cat([self.items(items), self.cats(cats)], dim=-1)


def valid_mask(lengths: Tensor, steps: int) -> Tensor:
    """[B, T] bool, True where step t < lengths[b]."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
