"""Warm start: a new model begins from a trained artifact's weights, on a dataset whose vocabularies may differ.

Every parameter is copied by name, except the embedding tables, which are copied row by token: an item or
category that both vocabularies hold gets its trained row wherever its id now is, a token new to this
dataset keeps the new model's initialization, and the reserved rows (padding, out-of-vocabulary) are copied.
So a warm start on a dataset prepared with ``--reference`` (old ids unchanged) and one prepared from
scratch (ids reordered by the new counts) give the same model, but for Wide&Deep's hashed cross features:
those are indexed by hashes of ids, so they are copied only when every old id kept its token and start fresh
otherwise. A different model kind or a config that differs in anything but the vocabulary sizes is refused,
naming the difference.
"""
from __future__ import annotations

from typing import Any

import torch

from dien.artifacts import ModelArtifact
from dien.data.vocab import OUT_OF_VOCABULARY, RESERVED, Vocabulary
from dien.model import CTRModel, ModelConfig

TOKEN_TABLES = {"embedding.items.weight": "item", "embedding.cats.weight": "category",
                "wide.items.weight": "item", "wide.cats.weight": "category"}
"""The parameters whose rows are vocabulary ids, and which vocabulary."""
ID_HASHED = ("wide.crosses.weight",)
"""Parameters indexed by hashes of ids (Wide&Deep's crosses): copied only while every old id keeps its token."""
VOCABULARY_SIZES = ("n_items", "n_cats")


class IncompatibleWarmStart(ValueError):
    """The artifact cannot start this model."""


def check_compatible(artifact: ModelArtifact, model_name: str, config: ModelConfig) -> None:
    """Raises :class:`IncompatibleWarmStart` naming what differs between the artifact and the new model."""
    if artifact.name != model_name:
        raise IncompatibleWarmStart(f"{artifact.path} holds a {artifact.name!r} model; this run trains "
                                    f"{model_name!r}")
    old, new = artifact.config.to_dict(), config.to_dict()
    differs = [f"{key}: {old.get(key)!r} in the artifact, {new.get(key)!r} here" for key in sorted(set(old) | set(new))
               if key not in VOCABULARY_SIZES and old.get(key) != new.get(key)]
    if differs:
        raise IncompatibleWarmStart(f"{artifact.path} cannot start this model: " + "; ".join(differs))


def _rows_by_token(old: torch.Tensor, new: torch.Tensor, old_vocab: Vocabulary, new_vocab: Vocabulary) -> int:
    """Copy into ``new`` [len(new_vocab), D] the rows of ``old`` whose token ``new_vocab`` holds; rows copied."""
    old_ids = torch.from_numpy(old_vocab.encode(new_vocab.tokens).astype("int64"))
    shared = old_ids != OUT_OF_VOCABULARY
    new_ids = torch.arange(RESERVED, len(new_vocab))[shared]
    new[:RESERVED] = old[:RESERVED]
    new[new_ids] = old[old_ids[shared]]
    return int(shared.sum()) + RESERVED


def _ids_kept(old_vocab: Vocabulary, new_vocab: Vocabulary) -> bool:
    """Whether every token of ``old_vocab`` has the same id in ``new_vocab`` (a ``--reference`` extension)."""
    return len(new_vocab) >= len(old_vocab) and new_vocab.tokens[:len(old_vocab) - RESERVED].equals(old_vocab.tokens)


def warm_start(model: CTRModel, model_name: str, config: ModelConfig, artifact: ModelArtifact, items: Vocabulary,
               categories: Vocabulary) -> dict[str, Any]:
    """Load ``artifact``'s weights into ``model`` (built with ``config`` for vocabularies ``items`` and
    ``categories``); what was carried over."""
    check_compatible(artifact, model_name, config)
    old_state = artifact.model.state_dict()
    new_state = model.state_dict()
    vocabularies = {"item": (artifact.items, items), "category": (artifact.categories, categories)}
    carried: dict[str, Any] = {"parameters": 0}
    ids_kept = all(_ids_kept(old, new) for old, new in vocabularies.values())
    with torch.no_grad():
        for name, target in new_state.items():
            if name not in old_state:
                raise IncompatibleWarmStart(f"{artifact.path} has no parameter {name}")
            if name in TOKEN_TABLES:
                old_vocab, new_vocab = vocabularies[TOKEN_TABLES[name]]
                carried[f"{TOKEN_TABLES[name]}_rows"] = _rows_by_token(old_state[name], target, old_vocab, new_vocab)
            elif name in ID_HASHED and not ids_kept:
                carried.setdefault("reinitialized", []).append(name)
            elif old_state[name].shape != target.shape:
                raise IncompatibleWarmStart(f"{name}: {tuple(old_state[name].shape)} in {artifact.path}, "
                                            f"{tuple(target.shape)} here")
            else:
                target.copy_(old_state[name])
                carried["parameters"] += 1
    return carried
