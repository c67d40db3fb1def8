"""The configuration every model is built from."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal


@dataclass(frozen=True)
class ModelConfig:
    n_items: int
    """Item vocabulary size, including padding (0) and out-of-vocabulary (1)."""
    n_cats: int
    """Category vocabulary size, including padding (0) and out-of-vocabulary (1)."""
    item_dim: int = 18
    """Item embedding width; a behavior is item and category embeddings concatenated."""
    cat_dim: int = 18
    """Category embedding width."""
    hidden: int = 36
    """GRU hidden size of the interest extractor and evolution layers (teacher 108, student 32)."""
    embedding_std: float | None = 0.01
    """Item and category embeddings start as N(0, embedding_std^2); None keeps PyTorch's N(0, 1). Small
    starting embeddings let rare items begin near zero instead of as large random vectors (README: choosing
    the defaults)."""
    mlp_dims: tuple[int, ...] = (200, 80)
    """Hidden widths of the prediction MLP; it ends in one logit."""
    activation: Literal["dice", "prelu"] = "dice"
    """Activation of the prediction MLP: dice or prelu."""
    attention: Literal["bilinear", "mlp"] = "bilinear"
    """Attention of the interest evolution layer: bilinear (paper Eq. 8) or mlp (the official code's)."""
    evolution: str = "augru"
    """Interest evolution kind: augru, agru, aigru, augru_official or gru_attention."""
    use_aux: bool = True
    """Whether the model adds the auxiliary loss of the interest extractor."""
    aux_dims: tuple[int, ...] = (100, 50)
    """Hidden widths of the auxiliary network on concat(h_t, e_{t+1})."""
    wide_buckets: int = 1 << 18
    """Wide&Deep: hash buckets of the wide part's cross features (target x history category)."""
    history_sum: bool = False
    """DIN and DIEN: False gives the papers' own MLP inputs (DIEN Fig. 3: target and final interest; DIN:
    target and attention-pooled history). True also feeds the sum-pooled history and its product with the
    target, as the official DIEN code does; that shortcut lets the MLP ignore the attention path (README)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        tuples = {"mlp_dims", "aux_dims"}
        # Artifacts written before history_sum existed were all trained with the sum-pooled inputs.
        values = {"history_sum": True, **values}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in values.items()})
