"""Models by name: each name is a class plus the config fields that define the variant."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

from dien.model.base import CTRModel
from dien.model.config import ModelConfig
from dien.model.din import DIN
from dien.model.dien import DIEN
from dien.model.pooling import ProductNetwork, SumPoolingModel, WideAndDeep


@dataclass(frozen=True)
class ModelSpec:
    builder: Callable[..., CTRModel]
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    """Config fields fixed by the variant (they override what the caller passes)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Constructor options besides the config."""


MODELS: dict[str, ModelSpec] = {
    "base": ModelSpec(SumPoolingModel, "BaseModel: Embedding & MLP with sum pooling"),
    "wide_deep": ModelSpec(WideAndDeep, "Wide&Deep: BaseModel's MLP + a linear part over hashed cross features"),
    "pnn": ModelSpec(ProductNetwork, "PNN: inner-product layer over the target and pooled-history fields + MLP"),
    "din": ModelSpec(DIN, "DIN: target attention over behaviors"),
    "gru_att": ModelSpec(DIEN, "Two-layer GRU + attention", {"evolution": "gru_attention", "use_aux": False}),
    "gru_aigru": ModelSpec(DIEN, "GRU + AIGRU", {"evolution": "aigru", "use_aux": False}),
    "gru_agru": ModelSpec(DIEN, "GRU + AGRU", {"evolution": "agru", "use_aux": False}),
    "gru_augru": ModelSpec(DIEN, "GRU + AUGRU (no auxiliary loss)", {"evolution": "augru", "use_aux": False}),
    "dien": ModelSpec(DIEN, "DIEN: GRU + auxiliary loss + AUGRU", {"evolution": "augru", "use_aux": True}),
}


def resolve_config(name: str, config: ModelConfig) -> ModelConfig:
    """``config`` with the fields that model ``name`` fixes."""
    return replace(config, **spec(name).config)


def spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def build_model(name: str, config: ModelConfig) -> CTRModel:
    """The model called ``name`` built from ``config`` (its variant fields fixed by the registry)."""
    model_spec = spec(name)
    return model_spec.builder(resolve_config(name, config), **model_spec.options)
