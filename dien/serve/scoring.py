"""Scoring a batch of requests with one model, without Ray: what the scorer deployment runs per batch.

Requests travel from the ingress to the scorer as tokens, not ids. Ids only mean something next to one
vocabulary: during a rolling update to a model trained on other data, an old ingress can call a new scorer,
and ids encoded for the old vocabulary would silently score the wrong items. Tokens are encoded here,
by the model that scores them, through its own vocabularies (unknown tokens -> out-of-vocabulary).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, fields
from itertools import repeat
from operator import is_not
from typing import Sequence

import numpy as np
import torch

from dien.data.batch import pad_flat
from dien.data.vocab import OUT_OF_VOCABULARY, RESERVED, Vocabulary
from dien.model import CTRModel
from dien.model.base import HistoryEncoding


CATEGORY_CONFLICTS = ("ignore", "reject")
"""What the scorer does with a client-sent category that contradicts the model's item table: ``ignore`` scores
the item with the table's category (and reports the position in ``corrected_categories``), ``reject`` answers
422 naming the field."""


@dataclass
class ScoreJob:
    """One request: candidates to score against one history.

    candidate_cats, history_cats: a category per entry, or None for "the item's own category" (the model's
    item table fills it). history_items, history_cats: oldest first, any length (the scorer keeps the model's
    ``max_len`` most recent); an item of None stands for a behavior the history store has no token for
    (scores as out-of-vocabulary).
    """

    candidate_items: list[str]
    candidate_cats: list[str | None]
    history_items: list[str | None] = field(default_factory=list)
    history_cats: list[str | None] = field(default_factory=list)
    request_id: str = ""
    """Serve's request id, for the scorer's logs."""
    history_from_request: bool = True
    """Whether the client sent the history (its categories are checked against the item table like the
    candidates'); False for a stored history, whose categories the table overrides silently."""

    def __post_init__(self) -> None:
        if len(self.candidate_items) != len(self.candidate_cats) or len(self.history_items) != len(self.history_cats):
            raise ValueError("a ScoreJob needs as many categories as items, for candidates and for the history")


@dataclass
class ScoreResult:
    scores: list[float]
    """Click probabilities in the request's candidate order (empty when ``errors``)."""
    history_length: int
    """Behaviors the model saw (after truncation to ``max_len``)."""
    unknown_candidates: list[int]
    """Positions of the candidates whose item the model's vocabulary lacks (scored as out-of-vocabulary)."""
    model: dict[str, str]
    """name and version of the model that scored."""
    batch_size: int
    """Requests scored in the same batch (observability)."""
    corrected_categories: list[int] = field(default_factory=list)
    """Positions of the candidates whose sent category the item table replaced."""
    errors: list[dict[str, str]] = field(default_factory=list)
    """``{"field", "message"}`` of each problem that makes the request unscorable (the ingress answers 422)."""


class TokenIndex:
    """Token -> id of one vocabulary, hashed once.

    ``Vocabulary.encode`` builds a hash table of the whole vocabulary on every call (~50 ms at 300k
    tokens), too slow per request; a dict answers a request's ~1,000 lookups in ~0.2 ms.
    """

    def __init__(self, vocabulary: Vocabulary) -> None:
        self._ids = {token: i for i, token in enumerate(vocabulary.tokens.to_pylist(), start=RESERVED)}

    def encode(self, tokens: Sequence[str | None]) -> np.ndarray:
        """[N] int64 ids; unknown tokens and None map to OUT_OF_VOCABULARY."""
        # map() with the dict's bound method iterates in C: a generator expression costs a frame per token.
        return np.fromiter(map(self._ids.get, tokens, repeat(OUT_OF_VOCABULARY, len(tokens))), dtype=np.int64,
                           count=len(tokens))


class ModelVocabulary:
    """What turns a request's tokens into the model's ids: the item and category indexes and the item table
    (each item id's category id, from the artifact; None for an artifact without one)."""

    def __init__(self, items: Vocabulary, categories: Vocabulary, item_categories: np.ndarray | None) -> None:
        self.items = TokenIndex(items)
        self.categories = TokenIndex(categories)
        if item_categories is not None and len(item_categories) != len(items):
            raise ValueError(f"the item table has {len(item_categories)} rows for {len(items)} item ids")
        self.item_categories = None if item_categories is None else item_categories.astype(np.int64)

    def resolve_categories(self, item_ids: np.ndarray, sent: Sequence[str | None]
                           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(category ids, conflicts, missing) of items ``item_ids`` [N] sent with categories ``sent``.

        The item table's category wins where it knows the item; elsewhere the sent one is used. ``conflicts``
        [N] bool: a sent category differs from the table's; ``missing`` [N] bool: neither has one.
        """
        sent_ids = self.categories.encode(sent)
        given = np.fromiter(map(is_not, sent, repeat(None, len(sent))), dtype=bool, count=len(sent))
        if self.item_categories is None:
            return sent_ids, np.zeros(len(sent), dtype=bool), ~given
        table = self.item_categories[item_ids]
        known = table > OUT_OF_VOCABULARY
        return np.where(known, table, sent_ids), known & given & (sent_ids != table), ~known & ~given


class HistoryEncodingCache:
    """Encodings of recently scored histories for one model version: least recently used first out, bounded
    by the bytes of their tensors.

    What the embeddings, the interest extractor GRU and the AUGRU's input projections compute for a history
    depends on the history and the model only, so a user's repeat request (the next page, a refresh) reuses
    them exactly. A new behavior makes a new history, encoded on its user's next request; the old one ages
    out. Keys hold the model version: one cache never answers with another model's encodings.
    """

    def __init__(self, max_bytes: int, version: str) -> None:
        self.max_bytes = max_bytes
        self.version = version
        self._entries: OrderedDict[tuple[str, bytes, bytes], tuple[HistoryEncoding, int]] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def key(self, hist_item: np.ndarray, hist_cat: np.ndarray) -> tuple[str, bytes, bytes]:
        return self.version, hist_item.tobytes(), hist_cat.tobytes()

    def get(self, key: tuple[str, bytes, bytes]) -> HistoryEncoding | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found[0]

    def put(self, key: tuple[str, bytes, bytes], encoding: HistoryEncoding) -> None:
        tensors = [getattr(encoding, f.name) for f in fields(encoding)]
        size = len(key[1]) + len(key[2]) + sum(t.numel() * t.element_size() for t in tensors if t is not None)
        if size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (encoding, size)
        self.nbytes += size
        self.resize(self.max_bytes)

    def resize(self, max_bytes: int) -> None:
        """A new bound; the least recently used entries leave until it holds."""
        self.max_bytes = max_bytes
        while self.nbytes > max_bytes:
            _, (_, size) = self._entries.popitem(last=False)
            self.nbytes -= size

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self), "bytes": self.nbytes, "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses}


@dataclass
class BatchScores:
    """What :func:`score_jobs` found for R jobs."""

    scores: list[np.ndarray]
    """Per job, [C_j] float32 click probabilities in candidate order."""
    history_lengths: np.ndarray
    """[R] int64 behaviors each job's model input held (after truncation to ``max_len``)."""
    unknown_candidates: list[np.ndarray]
    """Per job, the positions of candidates whose item is out of vocabulary."""
    corrected_categories: list[np.ndarray]
    """Per job, the positions of candidates whose sent category the item table replaced."""
    errors: list[list[dict[str, str]]]
    """Per job, the problems that make it unscorable (its scores are then meaningless)."""
    distinct_histories: int
    """Histories encoded: jobs of the same user with the same history share one encoding."""


@dataclass
class _EncodedJobs:
    """R jobs' ids, each kind concatenated over the jobs: histories (after truncation to ``max_len``) and
    candidates, with each job's bounds. One vocabulary pass per batch, not per job: per job, the NumPy calls
    would cost more than the lookups."""

    hist_item: np.ndarray
    """[sum of L_j] int64"""
    hist_cat: np.ndarray
    hist_bounds: np.ndarray
    """[R + 1] job j's behaviors are ``hist_item[hist_bounds[j]:hist_bounds[j + 1]]``."""
    target_item: np.ndarray
    """[sum of C_j] int64"""
    target_cat: np.ndarray
    target_bounds: np.ndarray
    conflicts: np.ndarray
    """[sum of C_j] bool: the sent category contradicts the item table's."""
    errors: list[list[dict[str, str]]]
    """Per job, the problems that make it unscorable."""

    def history(self, job: int) -> tuple[np.ndarray, np.ndarray]:
        span = slice(self.hist_bounds[job], self.hist_bounds[job + 1])
        return self.hist_item[span], self.hist_cat[span]

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """Per-candidate ``values`` [sum of C_j] as one array per job."""
        return np.split(values, self.target_bounds[1:-1])

    def positions(self, mask: np.ndarray) -> list[np.ndarray]:
        """Per job, the positions within it of the candidates where ``mask`` [sum of C_j] is true: one search
        over the batch, not one per job (mostly there is none)."""
        where = np.flatnonzero(mask)
        if not len(where):
            return [where] * (len(self.target_bounds) - 1)
        job = np.searchsorted(self.target_bounds, where, side="right") - 1
        return np.split(where - self.target_bounds[job], np.searchsorted(where, self.target_bounds[1:-1]))


def _bounds(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def _field_errors(where: str, mask: np.ndarray, message: str, offset: int = 0) -> list[dict[str, str]]:
    return [{"field": f"{where}[{int(i) + offset}].category", "message": message} for i in np.flatnonzero(mask)]


def _encode_jobs(vocabulary: ModelVocabulary, jobs: Sequence[ScoreJob], max_len: int,
                 category_conflict: str) -> _EncodedJobs:
    keeps = [max(len(job.history_items) - max_len, 0) for job in jobs]
    hist_bounds = _bounds([len(job.history_items) - keep for job, keep in zip(jobs, keeps)])
    target_bounds = _bounds([len(job.candidate_items) for job in jobs])
    hist_item = vocabulary.items.encode([t for job, keep in zip(jobs, keeps) for t in job.history_items[keep:]])
    hist_cat, hist_conflicts, hist_missing = vocabulary.resolve_categories(
        hist_item, [c for job, keep in zip(jobs, keeps) for c in job.history_cats[keep:]])
    target_item = vocabulary.items.encode([t for job in jobs for t in job.candidate_items])
    target_cat, conflicts, missing = vocabulary.resolve_categories(
        target_item, [c for job in jobs for c in job.candidate_cats])
    errors: list[list[dict[str, str]]] = [[] for _ in jobs]
    checks = []
    if vocabulary.item_categories is None:
        checks.append(("required: this model has no item table to look the item's category up in",
                       missing, hist_missing))
    if category_conflict == "reject":
        checks.append(("contradicts the model's item table (send the item's own category, or none)",
                       conflicts, hist_conflicts))
    for message, candidate_mask, history_mask in checks:
        if not (candidate_mask.any() or history_mask.any()):
            continue
        for j, (job, keep) in enumerate(zip(jobs, keeps)):
            errors[j] += _field_errors("candidates", candidate_mask[target_bounds[j]:target_bounds[j + 1]], message)
            if job.history_from_request:
                errors[j] += _field_errors("history", history_mask[hist_bounds[j]:hist_bounds[j + 1]], message,
                                           keep)
    return _EncodedJobs(hist_item, hist_cat, hist_bounds, target_item, target_cat, target_bounds, conflicts, errors)


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    """[R, max length] left-aligned, zero-padded ids of ``rows``."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    return pad_flat(np.concatenate(rows) if rows else np.zeros(0, np.int64), lengths)


def _encode_histories(model: CTRModel, histories: list[tuple[np.ndarray, np.ndarray]], device: torch.device | str,
                      cache: HistoryEncodingCache | None) -> HistoryEncoding:
    """One encoding of ``histories`` [U] (item ids, category ids): all computed, or those the cache lacks
    computed and cached."""
    def encoded(rows: list[tuple[np.ndarray, np.ndarray]]) -> HistoryEncoding:
        lengths = torch.from_numpy(np.fromiter((len(items) for items, _ in rows), dtype=np.int64, count=len(rows)))
        return model.encode_history(torch.from_numpy(_padded([items for items, _ in rows])).to(device),
                                    torch.from_numpy(_padded([cats for _, cats in rows])).to(device),
                                    lengths.to(device))

    if cache is None:
        return encoded(histories)
    keys = [cache.key(items, cats) for items, cats in histories]
    rows = [cache.get(key) for key in keys]
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        for i, row in zip(missing, encoded([histories[i] for i in missing]).rows(model.score_reads)):
            rows[i] = row
            cache.put(keys[i], row)
    return HistoryEncoding.stack(rows)


def score_jobs(model: CTRModel, vocabulary: ModelVocabulary, max_len: int, jobs: Sequence[ScoreJob],
               device: torch.device | str = "cpu", max_chunk_candidates: int = 4096,
               category_conflict: str = "ignore", cache: HistoryEncodingCache | None = None) -> BatchScores:
    """Click probabilities of every job's candidates, each job's history length after truncation, which
    candidates are unknown items, and which categories the item table replaced or found contradicted
    (``category_conflict``: one of :data:`CATEGORY_CONFLICTS`).

    The distinct histories of the R jobs (jobs of one user with the same history share one) are padded into
    one [U, T] batch and encoded once: embeddings, the interest extractor GRU and the evolution GRU's input
    projections. Each candidate then selects its history's encoding (only the tensors ``model.score``
    reads), and only attention, the AUGRU's recurrence and the MLP run per candidate, ``max_chunk_candidates``
    at a time. With a ``cache``, histories encoded by earlier batches are taken from it.
    """
    if category_conflict not in CATEGORY_CONFLICTS:
        raise ValueError(f"category_conflict must be one of {', '.join(CATEGORY_CONFLICTS)}, got {category_conflict!r}")
    encoded = _encode_jobs(vocabulary, jobs, max_len, category_conflict)
    distinct: dict[tuple[bytes, bytes], int] = {}
    histories: list[tuple[np.ndarray, np.ndarray]] = []
    history_of = np.empty(len(jobs), dtype=np.int64)
    for j in range(len(jobs)):
        items, cats = encoded.history(j)
        history_of[j] = distinct.setdefault((items.tobytes(), cats.tobytes()), len(distinct))
        if history_of[j] == len(histories):
            histories.append((items, cats))
    lengths = np.diff(encoded.hist_bounds)
    counts = np.diff(encoded.target_bounds)
    target_item = torch.from_numpy(encoded.target_item)
    target_cat = torch.from_numpy(encoded.target_cat)
    request_of = torch.from_numpy(np.repeat(history_of, counts))
    probabilities = torch.empty(int(counts.sum()), dtype=torch.float32)
    with torch.inference_mode():
        history = _encode_histories(model, histories, device, cache)
        for start in range(0, len(probabilities), max_chunk_candidates):
            chunk = slice(start, start + max_chunk_candidates)
            logits = model.score(history.select(request_of[chunk].to(device), model.score_reads),
                                 target_item[chunk].to(device), target_cat[chunk].to(device))
            probabilities[chunk] = torch.sigmoid(logits).float().cpu()
    # Rejected conflicts are errors, not corrections.
    corrected = encoded.positions(encoded.conflicts if category_conflict == "ignore" else np.zeros(0, bool))
    return BatchScores(scores=encoded.split(probabilities.numpy()), history_lengths=lengths,
                       unknown_candidates=encoded.positions(encoded.target_item == OUT_OF_VOCABULARY),
                       corrected_categories=corrected,
                       errors=encoded.errors, distinct_histories=len(distinct))
