"""The ingress's side of the hop to a Scorer deployment (``scoring: separate``): concurrent requests share calls.

A handle call (serialization, the router, the actor call and its reply) takes about as long as scoring one
100-candidate request: 3.4 against 3.5 ms on an idle 2-core machine (``dien.bench.request_path.hop_cost``),
and the same for a group of 16. Paid once per request it capped what the Scorer's batching could gain (1.34×
the requests/s of batching off there, 1.91× with shared calls), since the model's part shrinks with batching
and the hop's does not. So an ingress replica keeps a few calls out at a time and sends the requests
that arrived meanwhile together in the next one: under load the hop is paid per group, and a lone request
still leaves at once.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from dien.serve.config import ForwardingConfig
from dien.serve.scoring import ScoreJob, ScoreResult

logger = logging.getLogger("ray.serve")


class ScorerUnavailable(Exception):
    """The scorer replica died with the request and the retry found none either: a 503, never a 500."""


class CallCoalescer:
    """Sends jobs through ``send`` in shared calls: at most ``max_calls_in_flight`` at once, each carrying up to
    ``max_jobs_per_call`` jobs in arrival order. A failed call fails each of its jobs with its exception."""

    def __init__(self, send: Callable[[list[ScoreJob]], Awaitable[list[ScoreResult]]],
                 config: ForwardingConfig = ForwardingConfig()) -> None:
        self.send = send
        self.config = config
        self._waiting: list[tuple[ScoreJob, asyncio.Future[ScoreResult]]] = []
        self._in_flight = 0
        self._calls: set[asyncio.Task] = set()

    def reconfigure(self, config: ForwardingConfig) -> None:
        self.config = config
        self._dispatch()

    async def submit(self, job: ScoreJob) -> ScoreResult:
        future: asyncio.Future[ScoreResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((job, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._waiting and self._in_flight < self.config.max_calls_in_flight:
            group = self._waiting[:self.config.max_jobs_per_call]
            del self._waiting[:len(group)]
            # A client that hung up has cancelled its future: its job is not sent.
            group = [(job, future) for job, future in group if not future.done()]
            if not group:
                continue
            self._in_flight += 1
            call = asyncio.create_task(self._call(group))
            self._calls.add(call)  # the loop keeps only weak references to tasks
            call.add_done_callback(self._calls.discard)

    async def _call(self, group: list[tuple[ScoreJob, asyncio.Future[ScoreResult]]]) -> None:
        try:
            results = await self.send([job for job, _ in group])
        except Exception as error:  # noqa: BLE001 -- handed to every request of the call, raised in each
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._dispatch()


class RemoteScorer:
    """The scorer deployment behind a handle, its calls shared by concurrent requests (:class:`CallCoalescer`)."""

    def __init__(self, handle: DeploymentHandle, config: ForwardingConfig = ForwardingConfig()) -> None:
        self.handle = handle
        self.calls = CallCoalescer(self._send, config)

    def reconfigure(self, config: ForwardingConfig) -> None:
        self.calls.reconfigure(config)

    async def score(self, job: ScoreJob) -> ScoreResult:
        return await self.calls.submit(job)

    async def _send(self, jobs: list[ScoreJob]) -> list[ScoreResult]:
        """Scoring is idempotent: a call whose replica died is sent once more (the router picks a live replica,
        or waits for the replacement); a second death is :class:`ScorerUnavailable`."""
        try:
            return await self.handle.score.remote(jobs)
        except RayActorError as first:
            logger.warning("scorer replica died with requests %s (%s); retrying once",
                           " ".join(job.request_id for job in jobs), type(first).__name__)
            try:
                return await self.handle.score.remote(jobs)
            except RayActorError as second:
                raise ScorerUnavailable(f"the scorer did not answer: {type(second).__name__}; retry") from second

    async def ready(self) -> dict[str, str]:
        return await self.handle.ready.remote()

    async def model_info(self) -> dict[str, Any]:
        return await self.handle.model_info.remote()
