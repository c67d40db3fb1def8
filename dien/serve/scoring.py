"""Scoring a batch of requests with one model, without Ray: what the scorer deployment runs per batch.

Requests travel from the ingress to the scorer as tokens, not ids. Ids only mean something next to one
vocabulary: during a rolling update to a model trained on other data, an old ingress can call a new scorer,
and ids encoded for the old vocabulary would silently score the wrong items. Tokens are encoded here,
by the model that scores them, through its own vocabularies (unknown tokens -> out-of-vocabulary).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch

from dien.data.batch import pad_lists
from dien.data.vocab import OUT_OF_VOCABULARY, RESERVED, Vocabulary
from dien.model import CTRModel


@dataclass
class ScoreJob:
    """One request: candidates to score against one history.

    history_items, history_cats: oldest first, any length (the scorer keeps the model's ``max_len`` most
    recent); None stands for a behavior the history store has no token for (scores as out-of-vocabulary).
    """

    candidate_items: list[str]
    candidate_cats: list[str]
    history_items: list[str | None] = field(default_factory=list)
    history_cats: list[str | None] = field(default_factory=list)
    request_id: str = ""
    """Serve's request id, for the scorer's logs."""

    def __post_init__(self) -> None:
        if len(self.candidate_items) != len(self.candidate_cats) or len(self.history_items) != len(self.history_cats):
            raise ValueError("a ScoreJob needs as many categories as items, for candidates and for the history")


@dataclass
class ScoreResult:
    scores: list[float]
    """Click probabilities in the request's candidate order."""
    history_length: int
    """Behaviors the model saw (after truncation to ``max_len``)."""
    unknown_candidates: list[int]
    """Positions of the candidates whose item the model's vocabulary lacks (scored as out-of-vocabulary)."""
    model: dict[str, str]
    """name and version of the model that scored."""
    batch_size: int
    """Requests scored in the same batch (observability)."""


class TokenIndex:
    """Token -> id of one vocabulary, hashed once.

    ``Vocabulary.encode`` builds a hash table of the whole vocabulary on every call (~50 ms at 300k
    tokens), too slow per request; a dict answers a request's ~1,000 lookups in ~0.2 ms.
    """

    def __init__(self, vocabulary: Vocabulary) -> None:
        self._ids = {token: i for i, token in enumerate(vocabulary.tokens.to_pylist(), start=RESERVED)}

    def encode(self, tokens: Sequence[str | None]) -> np.ndarray:
        """[N] int64 ids; unknown tokens and None map to OUT_OF_VOCABULARY."""
        get = self._ids.get
        return np.fromiter((get(t, OUT_OF_VOCABULARY) for t in tokens), dtype=np.int64, count=len(tokens))


def _padded(index: TokenIndex, tokens: list[str | None], lengths: np.ndarray) -> np.ndarray:
    """[R, max(lengths)] left-aligned, zero-padded ids of the concatenated per-request ``tokens``."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    padded, _ = pad_lists(pa.ListArray.from_arrays(pa.array(offsets), pa.array(index.encode(tokens))))
    return padded


@dataclass
class BatchScores:
    """What :func:`score_jobs` found for R jobs."""

    scores: list[np.ndarray]
    """Per job, [C_j] float32 click probabilities in candidate order."""
    history_lengths: np.ndarray
    """[R] int64 behaviors each job's model input held (after truncation to ``max_len``)."""
    unknown_candidates: list[np.ndarray]
    """Per job, the positions of candidates whose item is out of vocabulary."""


def score_jobs(model: CTRModel, items: TokenIndex, categories: TokenIndex, max_len: int, jobs: Sequence[ScoreJob],
               device: torch.device | str = "cpu", max_chunk_candidates: int = 4096) -> BatchScores:
    """Click probabilities of every job's candidates, each job's history length after truncation, and which
    candidates are unknown items.

    All R histories are padded into one [R, T] batch and encoded once (embeddings and the interest
    extractor GRU); each of the C candidates then selects its request's encoding, and only attention,
    AUGRU and the MLP run per candidate, ``max_chunk_candidates`` at a time.
    """
    lengths = np.array([min(len(job.history_items), max_len) for job in jobs], dtype=np.int64)
    keep = [len(job.history_items) - n for job, n in zip(jobs, lengths)]
    hist_item = _padded(items, list(chain.from_iterable(j.history_items[k:] for j, k in zip(jobs, keep))), lengths)
    hist_cat = _padded(categories, list(chain.from_iterable(j.history_cats[k:] for j, k in zip(jobs, keep))), lengths)
    counts = np.array([len(job.candidate_items) for job in jobs], dtype=np.int64)
    target_item = torch.from_numpy(items.encode(list(chain.from_iterable(j.candidate_items for j in jobs))))
    target_cat = torch.from_numpy(categories.encode(list(chain.from_iterable(j.candidate_cats for j in jobs))))
    request_of = torch.from_numpy(np.repeat(np.arange(len(jobs)), counts))
    probabilities = torch.empty(int(counts.sum()), dtype=torch.float32)
    with torch.inference_mode():
        history = model.encode_history(torch.from_numpy(hist_item).to(device), torch.from_numpy(hist_cat).to(device),
                                       torch.from_numpy(lengths).to(device))
        for start in range(0, len(probabilities), max_chunk_candidates):
            chunk = slice(start, start + max_chunk_candidates)
            logits = model.score(history.select(request_of[chunk].to(device)), target_item[chunk].to(device),
                                 target_cat[chunk].to(device))
            probabilities[chunk] = torch.sigmoid(logits).float().cpu()
    bounds = np.cumsum(counts)[:-1]
    unknown = [np.flatnonzero(ids == OUT_OF_VOCABULARY) for ids in np.split(target_item.numpy(), bounds)]
    return BatchScores(np.split(probabilities.numpy(), bounds), lengths, unknown)
