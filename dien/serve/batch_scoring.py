"""Offline batch scoring: files of scoring requests through Ray Data, with the Serve scorer's own code.

A request is a row (Parquet, or JSON lines; gzip ok):

    request_id          string, optional: echoed in the output
    user_id             string, optional: whose stored history to use when the row has none
    history_item        list<string>, optional: the user's behaviors, oldest first (overrides the store)
    history_category    list<string>, optional: their categories (null: the model's item table fills them)
    candidate_item      list<string>, required: the items to score
    candidate_category  list<string>, optional: their categories (null: from the item table)

Each worker (a Ray Data actor per ``--workers``, a GPU each with ``--gpu``) loads the artifact once and scores
its batches of requests with :func:`dien.serve.scoring.score_jobs`, the function the Serve scorer runs, so a
request scores here exactly as ``POST /v1/score`` scores it. The output (Parquet) has one row per candidate
(:data:`OUTPUT_SCHEMA`); a request that cannot be scored (no candidates, lists of different lengths, a
category the model cannot resolve) keeps one row with its ``error`` and no score, and the others go on.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset
import pyarrow.parquet as pq

from dien.artifacts import load_artifact
from dien.data.formats import expand_inputs, resolve_format
from dien.serve.history import UserHistoryStore
from dien.serve.scorer import pick_device
from dien.serve.scoring import CATEGORY_CONFLICTS, ModelVocabulary, ScoreJob, score_jobs

logger = logging.getLogger(__name__)

REQUEST_COLUMNS = ("request_id", "user_id", "history_item", "history_category", "candidate_item",
                   "candidate_category")
OUTPUT_SCHEMA = pa.schema([
    ("request_id", pa.string()), ("user_id", pa.string()), ("position", pa.int32()), ("item_id", pa.string()),
    ("score", pa.float32()), ("unknown_item", pa.bool_()), ("history_length", pa.int32()),
    ("model_version", pa.string()), ("error", pa.string()),
])
"""One row per candidate: its position in the request, the click probability (null where ``error``), whether
the model's vocabulary lacks the item, the behaviors the model saw and the version that scored."""


@dataclass(frozen=True)
class BatchScoringConfig:
    model: str
    """Artifact directory."""
    inputs: tuple[str, ...]
    """Request files, directories or globs."""
    output: str
    """Directory the Parquet output is written to (must not exist)."""
    histories: str | None = None
    """Prepared dataset whose user histories serve requests that send none (None: such requests score with an
    empty history, like an unknown user)."""
    format: str | None = None
    """``parquet`` or ``jsonl``; None: from the files' extension."""
    workers: int = 1
    """Scoring actors, each holding the model once."""
    batch_size: int = 256
    """Requests per scored batch."""
    gpu: bool = False
    """A GPU per worker."""
    category_conflict: str = "ignore"
    """What a sent category that contradicts the item table gets (``reject``: the request's error)."""

    def __post_init__(self) -> None:
        if self.workers < 1 or self.batch_size < 1:
            raise ValueError("need workers >= 1 and batch_size >= 1")
        if self.category_conflict not in CATEGORY_CONFLICTS:
            raise ValueError(f"category_conflict must be one of {', '.join(CATEGORY_CONFLICTS)}")


def _lists(batch: pa.Table, name: str) -> list[list | None]:
    return batch.column(name).to_pylist() if name in batch.column_names else [None] * batch.num_rows


def _strings(batch: pa.Table, name: str) -> list[str | None]:
    if name not in batch.column_names:
        return [None] * batch.num_rows
    return pc.cast(batch.column(name), pa.string()).to_pylist()


def request_problem(candidates: list | None, candidate_cats: list | None, history: list | None,
                    history_cats: list | None, user_id: str | None) -> str | None:
    """Why a request row cannot be scored, or None."""
    if not candidates:
        return "candidate_item: required, at least one candidate"
    if candidate_cats is not None and len(candidate_cats) != len(candidates):
        return f"candidate_category: {len(candidate_cats)} categories for {len(candidates)} candidates"
    if history is not None and history_cats is not None and len(history_cats) != len(history):
        return f"history_category: {len(history_cats)} categories for {len(history)} behaviors"
    if history is None and user_id is None:
        return "user_id: required when history_item is not given"
    if any(item is None for item in candidates):
        return "candidate_item: null item"
    return None


class RequestScorer:
    """A Ray Data ``map_batches`` worker: the artifact and the history store loaded once, then batches of
    request rows scored into candidate rows (:data:`OUTPUT_SCHEMA`)."""

    def __init__(self, model: str, histories: str | None = None, device: str = "auto",
                 category_conflict: str = "ignore") -> None:
        self.device = pick_device(device)
        self.artifact = load_artifact(model, device=self.device)
        self.vocabulary = ModelVocabulary(self.artifact.items, self.artifact.categories, self.artifact.item_categories)
        self.store = UserHistoryStore.load(histories) if histories else None
        self.category_conflict = category_conflict
        self.version = str(self.artifact.manifest["version"])

    def jobs(self, batch: pa.Table) -> tuple[list[ScoreJob | None], list[str | None]]:
        """A :class:`ScoreJob` per row (None where the row cannot be scored) and each row's problem."""
        jobs: list[ScoreJob | None] = []
        problems: list[str | None] = []
        rows = zip(_strings(batch, "user_id"), _lists(batch, "history_item"), _lists(batch, "history_category"),
                   _lists(batch, "candidate_item"), _lists(batch, "candidate_category"))
        for user_id, history, history_cats, candidates, candidate_cats in rows:
            problem = request_problem(candidates, candidate_cats, history, history_cats, user_id)
            problems.append(problem)
            if problem is not None:
                jobs.append(None)
                continue
            from_request = history is not None
            if not from_request:
                stored = self.store.lookup(user_id) if self.store is not None else None
                history, history_cats = stored if stored is not None else ([], [])
            jobs.append(ScoreJob(candidate_items=[str(c) for c in candidates],
                                 candidate_cats=candidate_cats or [None] * len(candidates),
                                 history_items=list(history), history_cats=history_cats or [None] * len(history),
                                 history_from_request=from_request))
        return jobs, problems

    def __call__(self, batch: pa.Table) -> pa.Table:
        jobs, problems = self.jobs(batch)
        valid = [job for job in jobs if job is not None]
        scored = score_jobs(self.artifact.model, self.vocabulary, self.artifact.max_len, valid, self.device,
                            category_conflict=self.category_conflict) if valid else None
        columns: dict[str, list] = {field.name: [] for field in OUTPUT_SCHEMA}
        results = iter(range(len(valid)))
        for request_id, user_id, job, problem in zip(_strings(batch, "request_id"), _strings(batch, "user_id"), jobs,
                                                     problems):
            if job is not None:
                k = next(results)
                errors = scored.errors[k]
                problem = "; ".join(f"{e['field']}: {e['message']}" for e in errors) if errors else None
            if problem is not None:
                rows = {"position": [None], "item_id": [None], "score": [None], "unknown_item": [None],
                        "history_length": [None], "error": [problem]}
            else:
                unknown = np.zeros(len(job.candidate_items), dtype=bool)
                unknown[scored.unknown_candidates[k]] = True
                n = len(job.candidate_items)
                rows = {"position": list(range(n)), "item_id": job.candidate_items,
                        "score": scored.scores[k].tolist(), "unknown_item": unknown.tolist(),
                        "history_length": [int(scored.history_lengths[k])] * n, "error": [None] * n}
            count = len(rows["error"])
            columns["request_id"] += [request_id] * count
            columns["user_id"] += [user_id] * count
            columns["model_version"] += [self.version] * count
            for name, values in rows.items():
                columns[name] += values
        return pa.table(columns, schema=OUTPUT_SCHEMA)


def read_requests(config: BatchScoringConfig):
    """The request rows as a Ray dataset (only the known columns)."""
    import ray.data

    from dien.data.readers import read_parquet_files

    files = expand_inputs(list(config.inputs))
    format = resolve_format(files, config.format)
    if format == "parquet":
        present = set(pq.read_schema(files[0]).names)
        return read_parquet_files(files, [c for c in REQUEST_COLUMNS if c in present])
    if format == "jsonl":
        return ray.data.read_json(files, lines=True)
    raise ValueError(f"batch scoring reads parquet or jsonl requests, not {format}")


def score_requests(config: BatchScoringConfig) -> dict:
    """Score every request of ``config.inputs`` into ``config.output``; returns a summary."""
    output = Path(config.output)
    if output.exists():
        raise FileExistsError(f"{output} exists; choose a new output directory or remove it")
    load_artifact(config.model)  # a missing or altered artifact fails here, before any worker starts
    if config.histories:
        UserHistoryStore.load(config.histories)
    started = time.perf_counter()
    requests = read_requests(config)
    scored = requests.map_batches(
        RequestScorer, batch_format="pyarrow", batch_size=config.batch_size, concurrency=config.workers,
        num_gpus=1 if config.gpu else 0,
        fn_constructor_kwargs={"model": config.model, "histories": config.histories,
                               "device": "cuda" if config.gpu else "cpu",
                               "category_conflict": config.category_conflict})
    scored.write_parquet(str(output))
    errors = pyarrow.dataset.dataset(str(output), format="parquet").to_table(columns=["error"]).column("error")
    seconds = time.perf_counter() - started
    failed = len(errors) - errors.null_count  # a failed request is one row with its error
    candidates = errors.null_count
    summary = {"output": str(output), "candidates_scored": candidates, "requests_failed": failed,
               "seconds": seconds, "candidates_per_second": candidates / seconds if seconds else 0.0}
    logger.info("scored %(candidates_scored)d candidates in %(seconds).1f s; %(requests_failed)d requests failed",
                summary)
    return summary
