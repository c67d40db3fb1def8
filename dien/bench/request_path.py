"""Where a scoring request's time goes, in-process, and the compute limit every end-to-end figure is a share of.

Both run the serving code itself (the ingress's request model, the user-history store, the scorer's
:func:`dien.serve.scoring.score_jobs`) on the benchmark's request bodies, in this process on one torch thread,
as one scorer replica runs them: no HTTP, no Serve. :func:`hop_cost` adds the one step that needs Serve: a
call to a deployed Scorer, against scoring the same jobs here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from ray.serve.handle import DeploymentHandle

from dien.artifacts import load_artifact
from dien.bench.scoring_cost import best_seconds
from dien.bench.workload import Workload
from dien.serve.config import DEFAULT_VERSION, RequestLimits
from dien.serve.history import UserHistoryStore
from dien.serve.schemas import ModelRef, ScoreResponse, item_and_category_lists, score_request_model
from dien.serve.scoring import HistoryEncodingCache, ModelVocabulary, ScoreJob, score_jobs

BATCH_REQUESTS = 16
"""Requests scored together: the scorer's default ``max_batch_size``."""


class _Path:
    """The request path's pieces for one model and dataset."""

    def __init__(self, model: str | Path, data: str | Path) -> None:
        self.artifact = load_artifact(model)
        self.vocabulary = ModelVocabulary(self.artifact.items, self.artifact.categories,
                                          self.artifact.item_categories)
        self.store = UserHistoryStore.load(data)
        self.request_model = score_request_model(RequestLimits())

    def job(self, request: Any) -> ScoreJob:
        if request.history is not None:
            hist_items, hist_cats = item_and_category_lists(request.history)
        else:
            hist_items, hist_cats = self.store.lookup(request.user_id) or ([], [])
        items, cats = item_and_category_lists(request.candidates)
        return ScoreJob(items, cats, hist_items, hist_cats, history_from_request=request.history is not None)

    def score(self, jobs: list[ScoreJob], cache: HistoryEncodingCache | None = None) -> Any:
        return score_jobs(self.artifact.model, self.vocabulary, self.artifact.max_len, jobs, cache=cache)


def _batches(jobs: list[ScoreJob], size: int = BATCH_REQUESTS) -> list[list[ScoreJob]]:
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


def offline_candidates_per_s(model: str | Path, data: str | Path, workload: Workload, requests: int = 128,
                             repeats: int = 3, batch_requests: int = BATCH_REQUESTS) -> float:
    """Candidates/s of :func:`score_jobs` on the workload's first ``requests`` bodies in batches of
    ``batch_requests``, one torch thread, best of ``repeats``: the scorer's work without any HTTP."""
    path = _Path(model, data)
    jobs = [path.job(path.request_model.model_validate_json(b)) for b in workload.bodies[:requests]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = best_seconds(lambda: [path.score(batch) for batch in _batches(jobs, batch_requests)], repeats)
    finally:
        torch.set_num_threads(threads)
    return sum(len(j.candidate_items) for j in jobs) / seconds


def request_path_breakdown(model: str | Path, data: str | Path, workload: Workload, requests: int = 128,
                           repeats: int = 3) -> dict[str, float]:
    """Milliseconds per request of each in-process step, one torch thread: JSON parsing, validation into the
    request model, building the scorer's job (history lookup or the body's history), scoring in batches
    (tokens to ids, the item table, the model), and the response's model and JSON."""
    path = _Path(model, data)
    bodies = workload.bodies[:requests]
    parsed = [json.loads(b) for b in bodies]
    validated = [path.request_model.model_validate(p) for p in parsed]
    jobs = [path.job(r) for r in validated]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = [path.score(batch) for batch in _batches(jobs)]
        scores = [s for result in results for s in result.scores]
        model_ref = ModelRef(name=path.artifact.name, version=str(path.artifact.manifest["version"]),
                             label=DEFAULT_VERSION)
        steps = {
            "json_parse": lambda: [json.loads(b) for b in bodies],
            "validate": lambda: [path.request_model.model_validate(p) for p in parsed],
            "build_job": lambda: [path.job(r) for r in validated],
            "score": lambda: [path.score(batch) for batch in _batches(jobs)],
            "response": lambda: [ScoreResponse(scores=s.tolist(), model=model_ref, history_length=0).model_dump_json()
                                 for s in scores],
        }
        breakdown = {name: round(best_seconds(run, repeats) / len(bodies) * 1000, 4) for name, run in steps.items()}
    finally:
        torch.set_num_threads(threads)
    breakdown["total_in_process"] = round(sum(breakdown.values()), 4)
    return breakdown


def repeat_request_cost(model: str | Path, data: str | Path, workload: Workload, requests: int = 64,
                        repeats: int = 5) -> dict[str, float]:
    """Milliseconds of scoring per request, one torch thread, for requests whose user was scored before: without
    the history cache (everything recomputed) and with it (the history's encoding reused), each request alone
    (a lone repeat request) and in batches of :data:`BATCH_REQUESTS` (a busy replica)."""
    path = _Path(model, data)
    jobs = [path.job(path.request_model.model_validate_json(b)) for b in workload.bodies[:requests]]
    cache = HistoryEncodingCache(1 << 34, str(path.artifact.manifest["version"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cost = {}
        for grouping, batches in (("alone", [[job] for job in jobs]), ("batched", _batches(jobs))):
            for name, used in (("recomputed", None), ("cached", cache)):
                seconds = best_seconds(lambda: [path.score(batch, used) for batch in batches], repeats)
                cost[f"{grouping}_{name}_ms"] = round(seconds / len(jobs) * 1000, 4)
            cost[f"{grouping}_saving"] = round(1 - cost[f"{grouping}_cached_ms"] / cost[f"{grouping}_recomputed_ms"], 3)
    finally:
        torch.set_num_threads(threads)
    return cost


def hop_cost(scorer: DeploymentHandle, model: str | Path, data: str | Path, workload: Workload,
             group_sizes: tuple[int, ...] = (1, BATCH_REQUESTS), calls: int = 40) -> dict[str, dict[str, float]]:
    """Milliseconds of one call to the deployed ``scorer`` carrying ``g`` requests, for each ``g`` of
    ``group_sizes``, on an idle deployment: the round trip and scoring the same jobs in this process (medians of
    ``calls`` of each, alternating), the Scorer's batch wait (a lone group smaller than its ``max_batch_size`` waits
    ``batch_quiet_s`` for others, at most ``batch_wait_timeout_s``), and what is left, the hop (serialization,
    routing, the actor call and its reply)."""
    serving = scorer.model_info.remote().result()["serving"]
    path = _Path(model, data)
    jobs = [path.job(path.request_model.model_validate_json(b)) for b in workload.bodies[:max(group_sizes)]]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        costs = {}
        for size in group_sizes:
            group = jobs[:size]
            scorer.score.remote(group).result()  # the replica's first call of this shape
            path.score(group)
            round_trips, scoring = [], []
            for _ in range(calls):  # alternating, so that both see the machine in the same state
                started = time.perf_counter()
                scorer.score.remote(group).result()
                round_trips.append(time.perf_counter() - started)
                started = time.perf_counter()
                path.score(group)
                scoring.append(time.perf_counter() - started)
            round_trip_ms, score_ms = (sorted(times)[calls // 2] * 1000 for times in (round_trips, scoring))
            wait_s = min(serving["batch_quiet_s"], serving["batch_wait_timeout_s"])
            wait_ms = wait_s * 1000 if size < serving["max_batch_size"] else 0.0
            hop_ms = round_trip_ms - score_ms - wait_ms
            costs[str(size)] = {"round_trip_ms": round(round_trip_ms, 3), "score_ms": round(score_ms, 3),
                                "batch_wait_ms": round(wait_ms, 3), "hop_ms": round(hop_ms, 3),
                                "hop_ms_per_request": round(hop_ms / size, 3)}
    finally:
        torch.set_num_threads(threads)
    return costs
