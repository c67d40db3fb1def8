"""The scorer: loads one model artifact and scores batches of requests (:class:`dien.serve.batching.BatchQueue`).

:class:`BatchScorer` is the plain class; :data:`Scorer` is it as a deployment of its own (``scoring: separate``,
the default: the scorer tier scales, and may hold a GPU, apart from the HTTP tier). With ``scoring: in_ingress``
the ingress builds a ``BatchScorer`` in its own process instead, and requests skip the hop between replicas.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Sequence

import ray
import torch
from ray import serve
from ray.serve import metrics

from dien.allocator import retain_freed_memory
from dien.artifacts import ModelArtifact, load_artifact
from dien.serve.batching import Arrivals, BatchQueue, BatchWindow
from dien.serve.config import DEFAULT_VERSION, ScorerConfig, resolve_path
from dien.serve.scoring import BatchScores, HistoryEncodingCache, ModelVocabulary, ScoreJob, ScoreResult, score_jobs

# Serve's logger: in a replica every line carries the deployment, the replica and (inside a request) its id.
logger = logging.getLogger("ray.serve")

SCORER = "Scorer"
"""The deployment's name (the ``deployments:`` entry of the Serve configs) for the version ``default``."""


def scorer_name(label: str) -> str:
    """The Scorer deployment of version ``label``: ``Scorer`` for ``default``, else ``Scorer-<label>``."""
    return SCORER if label == DEFAULT_VERSION else f"{SCORER}-{label}"
_DEFAULTS = ScorerConfig()
TAGS = ("model_version", "model_label")
"""The tags of every scorer metric: the artifact's version and the label it is served as."""


def pick_device(requested: str) -> torch.device:
    """The device for ``requested`` (auto, cpu, cuda), from the GPUs Ray assigned to this replica."""
    if requested == "cpu":
        return torch.device("cpu")
    has_gpu = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    if requested == "cuda" and not has_gpu:
        raise RuntimeError("device is cuda but this replica has no GPU: give the Scorer deployment "
                           "ray_actor_options.num_gpus (e.g. 1), or use device: auto or cpu")
    return torch.device("cuda" if has_gpu else "cpu")


def batch_window(config: ScorerConfig) -> BatchWindow:
    """When the scorer's batches start, from its ``user_config``."""
    return BatchWindow(config.max_batch_size, config.batch_wait_timeout_s, config.batch_quiet_s)


def exponential_bounds(start: float, stop: float) -> list[float]:
    bounds = [start]
    while bounds[-1] * 2 <= stop:
        bounds.append(bounds[-1] * 2)
    return bounds


class BatchScorer:
    """Loads the artifact with the injected ``loader`` (the one batch inference and tests use), verifying
    its checksums, warms the model up, then scores batches of :class:`ScoreJob`.

    category_conflict: what a sent category that contradicts the model's item table gets
    (:data:`dien.serve.scoring.CATEGORY_CONFLICTS`); label: the version label this artifact is served as;
    arrivals: the requests on their way to this scorer in its process, counted by the HTTP side
    (``scoring: in_ingress``), for which a batch holds back its quiet-gap start.
    """

    def __init__(self, model: str, device: str = "auto", loader: Callable[..., ModelArtifact] = load_artifact,
                 category_conflict: str = "ignore", label: str = DEFAULT_VERSION,
                 arrivals: Arrivals | None = None) -> None:
        # Each batch allocates tens of MB; glibc would unmap them on free and fault them in again next batch.
        retain_freed_memory()
        self.device = pick_device(device)
        self.artifact = loader(resolve_path(model, "model artifact"), device=self.device)
        self.vocabulary = ModelVocabulary(self.artifact.items, self.artifact.categories,
                                          self.artifact.item_categories)
        self.category_conflict = category_conflict
        self.model_ref = {"name": self.artifact.name, "version": str(self.artifact.manifest["version"]),
                          "label": label}
        self.config = _DEFAULTS
        self.cache: HistoryEncodingCache | None = None
        # Per instance: with scoring: in_ingress a replica holds one BatchScorer per version, each batching alone.
        self._batches = BatchQueue(self._score_calls, batch_window(_DEFAULTS), arrivals, self._observe_wait)
        self._batch_requests = metrics.Histogram(
            "dien_scorer_batch_requests", description="Requests per scored batch.",
            boundaries=exponential_bounds(1, 1024), tag_keys=TAGS)
        self._batch_candidates = metrics.Histogram(
            "dien_scorer_batch_candidates", description="Candidates per scored batch.",
            boundaries=exponential_bounds(1, 1 << 20), tag_keys=TAGS)
        self._batch_wait = metrics.Histogram(
            "dien_scorer_batch_wait_ms", description="Wait of a batch's oldest request for the batch to start, in ms.",
            boundaries=exponential_bounds(0.0625, 20_000), tag_keys=TAGS)
        self._batch_latency = metrics.Histogram(
            "dien_scorer_batch_latency_ms", description="Time to score one batch (encode, model, split), in ms.",
            boundaries=exponential_bounds(0.5, 20_000), tag_keys=TAGS)
        self._candidates_scored = metrics.Counter(
            "dien_scorer_candidates_scored", description="Candidates scored.", tag_keys=TAGS)
        for metric in (self._batch_requests, self._batch_candidates, self._batch_wait, self._batch_latency,
                       self._candidates_scored):
            # Serve adds its own tags (deployment, replica) to the dict.
            metric.set_default_tags({"model_version": self.model_ref["version"], "model_label": label})
        # The first call allocates and (on GPU) compiles kernels: pay for it before the replica is ready.
        max_len = self.artifact.max_len
        self._score_now([ScoreJob(["warm-up"], ["warm-up"], ["warm-up"] * max_len, ["warm-up"] * max_len)])
        logger.info("Scorer ready: model %s version %s as %r from %s on %s (item table: %s)",
                    self.model_ref["name"], self.model_ref["version"], label, self.artifact.path, self.device,
                    "none" if self.artifact.item_categories is None else f"{len(self.artifact.item_categories)} items")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a ``user_config`` (:class:`ScorerConfig`) to the running replica."""
        config = ScorerConfig.model_validate(user_config)
        self._batches.window = batch_window(config)
        torch.set_num_threads(config.torch_threads)
        cache_bytes = int(config.history_cache_mb * 2**20)
        if cache_bytes == 0:
            self.cache = None
        elif self.cache is None:
            self.cache = HistoryEncodingCache(cache_bytes, self.model_ref["version"])
        else:
            self.cache.resize(cache_bytes)
        self.config = config
        logger.info("Scorer configured: %s", config.model_dump())

    def _score_now(self, jobs: list[ScoreJob]) -> BatchScores:
        return score_jobs(self.artifact.model, self.vocabulary, self.artifact.max_len, jobs, self.device,
                          self.config.max_chunk_candidates, self.category_conflict, self.cache)

    async def score(self, jobs: list[ScoreJob]) -> list[ScoreResult]:
        """Scores ``jobs`` (one request, or an ingress's group of them) in batches of at most ``max_batch_size``
        requests, merged with the jobs of concurrent calls."""
        size = self.config.max_batch_size
        if len(jobs) <= size:
            return await self._batches.submit(jobs)
        groups = await asyncio.gather(*(self._batches.submit(jobs[start:start + size])
                                        for start in range(0, len(jobs), size)))
        return [result for group in groups for result in group]

    def _observe_wait(self, waited_s: float) -> None:
        self._batch_wait.observe(waited_s * 1000)

    async def _score_calls(self, calls: list[Sequence[ScoreJob]]) -> list[list[ScoreResult]]:
        """One batch of :attr:`_batches`: the jobs of concurrent calls to :meth:`score`, a list per call."""
        jobs = [job for call in calls for job in call]
        started = time.perf_counter()
        if self.config.score_in_thread:
            scored = await asyncio.to_thread(self._score_now, jobs)
        else:
            scored = self._score_now(jobs)
        elapsed_ms = (time.perf_counter() - started) * 1000
        candidates = sum(len(s) for s in scored.scores)
        self._batch_requests.observe(len(jobs))
        self._batch_candidates.observe(candidates)
        self._batch_latency.observe(elapsed_ms)
        self._candidates_scored.inc(candidates)
        logger.debug("scored %d requests in %d calls (%d distinct histories), %d candidates in %.1f ms: %s",
                     len(jobs), len(calls), scored.distinct_histories, candidates, elapsed_ms,
                     " ".join(job.request_id for job in jobs))
        results = (ScoreResult(scores=[] if errors else s.tolist(), history_length=int(n),
                               unknown_candidates=u.tolist(), model=self.model_ref, batch_size=len(jobs),
                               corrected_categories=c.tolist(), errors=errors)
                   for s, n, u, c, errors in zip(scored.scores, scored.history_lengths, scored.unknown_candidates,
                                                 scored.corrected_categories, scored.errors))
        return [[next(results) for _ in call] for call in calls]

    def ready(self) -> dict[str, str]:
        """The model's name and version (a cheap liveness probe for the ingress's /healthz)."""
        return self.model_ref

    def model_info(self) -> dict[str, Any]:
        """What ``GET /v1/model`` shows: manifest facts and this replica's serving settings."""
        manifest = self.artifact.manifest
        return {
            **self.model_ref,
            "created": manifest.get("created"),
            "hidden": self.artifact.config.hidden,
            "max_len": self.artifact.max_len,
            "item_table": self.artifact.item_categories is not None,
            "vocab_sizes": manifest.get("vocab_sizes", {}),
            "metrics": manifest.get("metrics", {}),
            "parent": manifest.get("extra", {}).get("parent"),
            "config": manifest["model"]["config"],
            "serving": {
                "replica": serve.get_replica_context().replica_tag,
                "device": str(self.device),
                "category_conflict": self.category_conflict,
                **self.config.model_dump(),
                "history_cache": self.cache.stats() if self.cache is not None else None,
            },
        }


Scorer = serve.deployment(
    name=SCORER,
    # Calls queue at the replica for the next batches; a full replica makes callers' routers back off instead.
    max_ongoing_requests=8 * _DEFAULTS.max_batch_size,
    user_config=_DEFAULTS.model_dump(),
    ray_actor_options={"num_cpus": 1},
    # Replacements start and become ready before old replicas stop, which first finish what they hold.
    max_surge_percent=100,
    graceful_shutdown_timeout_s=30,
    # A missing or altered artifact does not heal itself: fail the deploy soon, with the loader's message.
    max_constructor_retry_count=3,
)(BatchScorer)
"""The scorer as its own deployment (``scoring: separate``)."""
