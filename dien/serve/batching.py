"""The scorer's batch queue: the requests of concurrent calls scored together, started as soon as none is coming.

Serve's ``@serve.batch`` starts a batch when it is full or when ``batch_wait_timeout_s`` has passed since its
first request, so a lone request waits the whole window for requests that are not coming: at 1 in flight our
1-candidate request took 10.7 ms, 5 of them that wait, where a plain uvicorn endpoint answered in 4.0. This
queue keeps both rules and adds a third: a batch also starts once ``batch_quiet_s`` has passed without a
request joining it and none is on its way. Requests that come together (a closed loop's clients answered by one
batch) join within that gap; where the batches run in the HTTP replica (``scoring: in_ingress``) the requests
a blocking batch held back are parsed one after another, often more than the gap apart, so the replica counts
each scoring request from its first byte until it joins (:class:`Arrivals`) and the gap does not cut a batch
while any is on its way. Under load batches fill as before, and a lone request leaves after the gap instead of
the window.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Iterator, Sequence, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")


@dataclass(frozen=True)
class BatchWindow:
    """When a batch starts: full, or its oldest request has waited ``wait_s``, or ``quiet_s`` passed with no
    request joining (``quiet_s >= wait_s``: the fixed window of ``@serve.batch``; 0: what is queued goes)."""

    max_requests: int
    wait_s: float
    quiet_s: float

    def __post_init__(self) -> None:
        if self.max_requests < 1 or self.wait_s < 0 or self.quiet_s < 0:
            raise ValueError(f"a batch window needs max_requests >= 1 and times >= 0, got {self}")


class Arrival:
    """One request on its way to a batch queue: counted in its :class:`Arrivals` until it joins one or leaves."""

    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals
        self.counted = True

    def reached(self) -> None:
        """The request joined a queue, or went without one (a 4xx): no batch waits for it any more."""
        if self.counted:
            self.counted = False
            self.arrivals.on_the_way -= 1
            for queue in self.arrivals.queues:
                queue.wake()


_current_arrival: contextvars.ContextVar[Arrival | None] = contextvars.ContextVar("dien_arrival", default=None)


class Arrivals:
    """The requests a replica has begun to read that have not joined a batch queue yet. The HTTP side wraps each
    scoring request in :meth:`arriving`; :meth:`BatchQueue.submit` marks the request it is called for as
    arrived, and every queue built with these arrivals is woken when one arrives or leaves."""

    def __init__(self) -> None:
        self.on_the_way = 0
        self.queues: list[BatchQueue] = []

    @contextlib.contextmanager
    def arriving(self) -> Iterator[Arrival]:
        """Counts the request handled inside the block until it joins a queue or the block ends."""
        arrival = Arrival(self)
        self.on_the_way += 1
        token = _current_arrival.set(arrival)
        try:
            yield arrival
        finally:
            arrival.reached()  # first: a count left behind would hold every batch to its full window
            _current_arrival.reset(token)


@dataclass
class _Call(Generic[Job, Result]):
    jobs: Sequence[Job]
    done: asyncio.Future[list[Result]]
    joined: float
    """The event loop's time when the call was queued."""


class BatchQueue(Generic[Job, Result]):
    """Collects calls (each a list of jobs) and scores them in batches of at most ``window.max_requests`` jobs
    with ``score_batch`` (one list of results per call, in order), one batch at a time. A call is never split:
    one larger than a batch (left by a lowered ``max_requests``) is a batch of its own. A batch that raises fails
    each of its calls with the exception; a call whose caller went away is dropped unscored.

    arrivals: the replica's requests on their way (None: none are counted, a batch goes on its quiet gap);
    observe_wait: called with each batch's wait, in seconds, from its oldest call joining to the batch starting.
    """

    def __init__(self, score_batch: Callable[[list[Sequence[Job]]], Awaitable[list[list[Result]]]],
                 window: BatchWindow, arrivals: Arrivals | None = None,
                 observe_wait: Callable[[float], None] | None = None) -> None:
        self.score_batch = score_batch
        self._window = window
        self.arrivals = arrivals
        self.observe_wait = observe_wait
        if arrivals is not None:
            arrivals.queues.append(self)
        self._calls: deque[_Call[Job, Result]] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        self._runner: asyncio.Task | None = None

    @property
    def window(self) -> BatchWindow:
        return self._window

    @window.setter
    def window(self, window: BatchWindow) -> None:
        """A new window applies to the batch waiting now too. Thread-safe: Serve may run ``reconfigure`` in a
        worker thread."""
        self._window = window
        if self._runner is not None and not self._runner.done():
            loop = self._runner.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(self.wake)

    async def submit(self, jobs: Sequence[Job]) -> list[Result]:
        """The results of ``jobs``, scored in the next batch that has room for them."""
        loop = asyncio.get_running_loop()
        call: _Call[Job, Result] = _Call(jobs, loop.create_future(), loop.time())
        self._calls.append(call)
        arrival = _current_arrival.get()
        if arrival is not None:
            arrival.reached()
        if self._runner is None or self._runner.done():
            # A fresh context: the batches are nobody's request (Serve's log lines would name the first caller's).
            self._runner = loop.create_task(self._run(), context=contextvars.Context())
        self.wake()
        return await call.done

    def wake(self) -> None:
        """Let a waiting batch check again whether it may start."""
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _sleep(self, until: float | None) -> None:
        """Until the next call joins, or the loop's time ``until`` (None: no limit)."""
        loop = asyncio.get_running_loop()
        self._wakeup = loop.create_future()
        timer = loop.call_at(until, self.wake) if until is not None else None
        try:
            await self._wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    def _queued_requests(self) -> int:
        return sum(len(call.jobs) for call in self._calls)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while self._calls and self._calls[0].done.done():
                self._calls.popleft()  # its caller went away: it neither fills a batch nor starts one
            if not self._calls:
                await self._sleep(None)
                continue
            window = self._window
            window_ends = self._calls[0].joined + window.wait_s
            quiet_ends = self._calls[-1].joined + window.quiet_s
            now = loop.time()
            if self._queued_requests() < window.max_requests and now < window_ends:
                if now < quiet_ends:
                    await self._sleep(min(quiet_ends, window_ends))
                    continue
                if self.arrivals is not None and self.arrivals.on_the_way > 0:
                    await self._sleep(window_ends)
                    continue
            await self._score(self._take(window.max_requests))

    def _take(self, max_requests: int) -> list[_Call[Job, Result]]:
        """The oldest calls that fit in one batch (at least one), the cancelled ones dropped."""
        taken, requests = [], 0
        while self._calls and (not taken or requests + len(self._calls[0].jobs) <= max_requests):
            call = self._calls.popleft()
            if not call.done.done():
                taken.append(call)
                requests += len(call.jobs)
        return taken

    async def _score(self, calls: list[_Call[Job, Result]]) -> None:
        if self.observe_wait is not None:
            self.observe_wait(asyncio.get_running_loop().time() - calls[0].joined)
        try:
            answers = list(zip(calls, await self.score_batch([call.jobs for call in calls]), strict=True))
        except Exception as error:  # noqa: BLE001 -- handed to every call of the batch, raised in each
            for call in calls:
                if not call.done.done():
                    call.done.set_exception(error)
            return
        for call, result in answers:
            if not call.done.done():
                call.done.set_result(result)
