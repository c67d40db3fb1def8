"""A concurrent HTTP load generator (asyncio + aiohttp) for ``POST /v1/score`` (or a workload's own endpoint).

Two ways to drive a server:

- **closed loop** (:func:`closed_loop`): ``concurrency`` clients, each sending its next request as soon as the
  previous one is answered. Finds the throughput a server sustains at a given number of requests in flight.
- **open loop** (:func:`open_loop`): requests are *scheduled* at a fixed rate, whatever the server does, and
  each latency is measured from the request's intended send time. A stalled server therefore shows up as
  latency of every request scheduled during the stall, not only of the one that was in flight (no
  coordinated omission), and a client that falls behind its schedule counts against the server too.

Only the requests of a measurement window count: a warm-up before it opens connections and fills batches;
a closed loop keeps its clients busy until the window ends, so the load is steady throughout it.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Coroutine

import aiohttp
import numpy as np

from dien.bench.workload import Workload

HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class LoadSettings:
    """How long and how hard one measurement drives the server."""

    duration_s: float = 8.0
    """Length of the measurement window, in seconds."""
    warmup_s: float = 2.0
    """Load before the window, in seconds (not counted)."""
    timeout_s: float = 30.0
    """A request unanswered after this many seconds counts as an error (``timeout``)."""
    max_connections: int = 512
    """Open-loop connection pool size: requests beyond it wait for a connection (and that wait counts)."""


@dataclass
class LoadResult:
    """What one measurement saw. Latencies are in milliseconds."""

    mode: str
    """closed (a fixed number of requests in flight) or open (a fixed request rate)."""
    candidates: int
    """Candidates per request."""
    concurrency: int | None = None
    """Closed loop: requests kept in flight."""
    offered_rps: float | None = None
    """Open loop: the scheduled request rate."""
    duration_s: float = 0.0
    """Seconds the rates are over: the window; open loop: until the window's last answer, if later."""
    requests: int = 0
    """Requests of the window answered with 200 (closed loop: sent in it; open loop: scheduled in it)."""
    errors: int = 0
    """Requests of the window that failed (non-200, connection error or timeout)."""
    error_kinds: dict[str, int] = field(default_factory=dict)
    requests_per_s: float = 0.0
    candidates_per_s: float = 0.0
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    mean_ms: float = float("nan")
    late_sends: int = 0
    """Open loop: requests the client sent more than 10 ms after their intended time (its own lag,
    included in their latency)."""

    def as_dict(self) -> dict[str, Any]:
        """The fields, NaN (no request answered) as None so the dict is valid JSON."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


class _Window:
    """Collects the outcomes of the requests that count: those sent (closed loop) or scheduled (open loop)
    inside the window."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = start, end
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.last_done = end

    def counts(self, started: float) -> bool:
        return self.start <= started < self.end

    def answered(self, started: float) -> None:
        done = time.perf_counter()
        self.latencies.append(done - started)
        self.last_done = max(self.last_done, done)

    def result(self, mode: str, candidates: int, until_answered: bool = False, **setting: Any) -> LoadResult:
        """until_answered: requests/s over the time until the window's last answer (an open loop's schedule
        does not wait for a slow server, so its answers may come long after the window)."""
        duration = (self.last_done if until_answered else self.end) - self.start
        latencies = np.asarray(self.latencies) * 1000.0
        result = LoadResult(mode=mode, candidates=candidates, duration_s=round(duration, 3),
                            requests=len(latencies), errors=sum(self.errors.values()),
                            error_kinds=dict(self.errors), **setting)
        result.requests_per_s = len(latencies) / duration
        result.candidates_per_s = result.requests_per_s * candidates
        if len(latencies):
            p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
            result.p50_ms, result.p90_ms, result.p99_ms = float(p50), float(p90), float(p99)
            result.max_ms, result.mean_ms = float(latencies.max()), float(latencies.mean())
        return result


def _target(url: str, workload: Workload) -> str:
    return url.rstrip("/") + workload.path


async def _post(session: aiohttp.ClientSession, url: str, body: bytes) -> str | None:
    """Send one request; None when it was answered with 200, else what went wrong."""
    try:
        async with session.post(url, data=body, headers=HEADERS) as response:
            await response.read()
            return None if response.status == 200 else f"HTTP {response.status}"
    except asyncio.TimeoutError:
        return "timeout"
    except aiohttp.ClientError as error:
        return type(error).__name__


def _session(settings: LoadSettings, connections: int) -> aiohttp.ClientSession:
    # One connection per request in flight: no request waits for a connection in a closed loop.
    connector = aiohttp.TCPConnector(limit=connections, force_close=False, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=settings.timeout_s))


async def closed_loop(url: str, workload: Workload, concurrency: int,
                      settings: LoadSettings = LoadSettings()) -> LoadResult:
    """Keep ``concurrency`` requests in flight for the warm-up and the window; measure the window."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    target, bodies = _target(url, workload), workload.bodies
    now = time.perf_counter()
    window = _Window(now + settings.warmup_s, now + settings.warmup_s + settings.duration_s)

    async def client(offset: int) -> None:
        n = offset
        while time.perf_counter() < window.end:
            started = time.perf_counter()
            error = await _post(session, target, bodies[n % len(bodies)])
            n += concurrency
            if window.counts(started):
                if error is None:
                    window.answered(started)
                else:
                    window.errors[error] += 1

    async with _session(settings, concurrency) as session:
        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return window.result("closed", workload.candidates, concurrency=concurrency)


async def open_loop(url: str, workload: Workload, rate: float,
                    settings: LoadSettings = LoadSettings()) -> LoadResult:
    """Schedule requests every ``1 / rate`` seconds through the warm-up and the window; each latency runs from
    the request's intended send time to its answer."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    target, bodies = _target(url, workload), workload.bodies
    interval = 1.0 / rate
    origin = time.perf_counter()
    window = _Window(origin + settings.warmup_s, origin + settings.warmup_s + settings.duration_s)
    late = 0

    async def request(intended: float, body: bytes) -> None:
        error = await _post(session, target, body)
        if window.counts(intended):
            if error is None:
                window.answered(intended)
            else:
                window.errors[error] += 1

    async with _session(settings, settings.max_connections) as session:
        pending: set[asyncio.Task] = set()
        n = 0
        while (intended := origin + n * interval) < window.end:
            delay = intended - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.010 and window.counts(intended):
                late += 1
            task = asyncio.create_task(request(intended, bodies[n % len(bodies)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        if pending:
            await asyncio.wait(pending)
    result = window.result("open", workload.candidates, until_answered=True, offered_rps=rate)
    result.late_sends = late
    return result


def run(coroutine: Coroutine[Any, Any, LoadResult]) -> LoadResult:
    """Run one measurement in a fresh event loop (uvloop when installed: less client CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def measure(url: str, workload: Workload, settings: LoadSettings, *, concurrency: int | None = None,
            rate: float | None = None) -> LoadResult:
    """One closed-loop (``concurrency``) or open-loop (``rate``) measurement, run to completion."""
    if (concurrency is None) == (rate is None):
        raise ValueError("give exactly one of concurrency (closed loop) or rate (open loop)")
    if concurrency is not None:
        return run(closed_loop(url, workload, concurrency, settings))
    return run(open_loop(url, workload, rate, settings))
