"""Offline scoring throughput: what one candidate costs on the serving path (history encoded once per
request, attention, interest evolution and the MLP once per candidate)."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from dien.data.batch import Batch
from dien.model import CTRModel


@torch.no_grad()
def candidates_per_second(model: CTRModel, batch: Batch, candidates_per_request: int, repeats: int = 3) -> float:
    """Candidates scored per second when each history of ``batch`` is paired with ``candidates_per_request``
    candidates (the batch's targets, cycled). Best of ``repeats`` timed runs after one warm-up."""
    model.eval()
    requests = len(batch)
    request_of = torch.arange(requests).repeat_interleave(candidates_per_request)
    candidate_rows = torch.arange(requests * candidates_per_request) % requests
    items, cats = batch.target_item[candidate_rows], batch.target_cat[candidate_rows]

    def run() -> None:
        history = model.encode_history(batch.hist_item, batch.hist_cat, batch.lengths)
        torch.sigmoid(model.score(history.select(request_of, model.score_reads), items, cats))

    return requests * candidates_per_request / best_seconds(run, repeats)


def best_seconds(run: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``run``, after one untimed warm-up call."""
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best
