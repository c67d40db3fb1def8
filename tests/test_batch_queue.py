"""The scorer's batch queue (``dien.serve.batching``) on its own: when batches start, what they hold, failures.

Times are far apart (a quiet gap of tens of ms against a window of seconds), so that a loaded machine's
scheduling delays cannot turn one rule into another.
"""
from __future__ import annotations

import asyncio
import time
from typing import Sequence

import pytest

from dien.serve.batching import Arrivals, BatchQueue, BatchWindow


class Recorder:
    """A batch function that records each batch's calls and the time it started, answering each job with its
    own name upper-cased."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[list[str]]] = []
        self.started: list[float] = []
        self.fail_on = fail_on

    async def __call__(self, calls: list[Sequence[str]]) -> list[list[str]]:
        self.batches.append([list(call) for call in calls])
        self.started.append(time.perf_counter())
        if any(self.fail_on in call for call in calls):
            raise ConnectionError("the model went away")
        return [[job.upper() for job in call] for call in calls]


def test_a_lone_request_starts_its_batch_after_the_quiet_gap_not_the_window():
    recorder = Recorder()
    waits: list[float] = []
    queue = BatchQueue(recorder, BatchWindow(max_requests=16, wait_s=5.0, quiet_s=0.02),
                       observe_wait=waits.append)

    async def run() -> tuple[list[str], float]:
        sent = time.perf_counter()
        return await queue.submit(["a"]), sent

    answer, sent = asyncio.run(run())
    assert answer == ["A"]
    assert 0.02 <= recorder.started[0] - sent < 1.0
    assert len(waits) == 1 and 0.02 <= waits[0] < 1.0


def test_requests_joining_within_the_gap_share_a_batch_until_it_is_full():
    recorder = Recorder()
    queue = BatchQueue(recorder, BatchWindow(max_requests=4, wait_s=5.0, quiet_s=0.5))

    async def run() -> list[list[str]]:
        tasks = []
        for name in "abcdef":
            tasks.append(asyncio.create_task(queue.submit([name])))
            await asyncio.sleep(0.01)
        return await asyncio.gather(*tasks)

    started = time.perf_counter()
    answers = asyncio.run(run())
    assert answers == [[name.upper()] for name in "abcdef"]
    # The first four fill a batch, which starts at once; the last two wait out the gap together.
    assert recorder.batches == [[["a"], ["b"], ["c"], ["d"]], [["e"], ["f"]]]
    assert recorder.started[0] - started < 0.4 <= recorder.started[1] - started


def test_a_steady_trickle_is_cut_by_the_window():
    recorder = Recorder()
    queue = BatchQueue(recorder, BatchWindow(max_requests=1000, wait_s=0.3, quiet_s=1.0))

    async def run() -> None:
        tasks = []
        for k in range(20):
            tasks.append(asyncio.create_task(queue.submit([str(k)])))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)

    asyncio.run(run())
    assert 2 <= len(recorder.batches) <= 5
    assert [int(call[0]) for batch in recorder.batches for call in batch] == list(range(20))


def test_a_gap_as_long_as_the_window_waits_the_whole_window():
    recorder = Recorder()
    queue = BatchQueue(recorder, BatchWindow(max_requests=16, wait_s=0.3, quiet_s=0.3))

    async def run() -> float:
        sent = time.perf_counter()
        await queue.submit(["a"])
        return sent

    sent = asyncio.run(run())
    assert recorder.started[0] - sent >= 0.3


def test_calls_are_never_split_and_one_larger_than_a_batch_goes_alone():
    recorder = Recorder()
    queue = BatchQueue(recorder, BatchWindow(max_requests=3, wait_s=5.0, quiet_s=0.05))

    async def run() -> list[list[str]]:
        return await asyncio.gather(queue.submit(["a", "b"]), queue.submit(["c", "d"]),
                                    queue.submit(["e", "f", "g", "h"]), queue.submit(["i"]))

    answers = asyncio.run(run())
    assert answers == [["A", "B"], ["C", "D"], ["E", "F", "G", "H"], ["I"]]
    assert recorder.batches == [[["a", "b"]], [["c", "d"]], [["e", "f", "g", "h"]], [["i"]]]


def test_a_failed_batch_fails_each_of_its_calls_a_cancelled_call_is_not_scored_and_the_next_batch_goes():
    recorder = Recorder(fail_on="bad")
    queue = BatchQueue(recorder, BatchWindow(max_requests=2, wait_s=5.0, quiet_s=0.05))

    async def run() -> dict[str, object]:
        tasks = {name: asyncio.create_task(queue.submit([name])) for name in ("bad", "x", "gone", "y")}
        await asyncio.sleep(0)
        tasks["gone"].cancel()  # its client hung up while it waited
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
        return dict(zip(tasks, outcomes))

    outcomes = asyncio.run(run())
    assert recorder.batches == [[["bad"], ["x"]], [["y"]]]
    assert isinstance(outcomes["bad"], ConnectionError) and isinstance(outcomes["x"], ConnectionError)
    assert isinstance(outcomes["gone"], asyncio.CancelledError)
    assert outcomes["y"] == ["Y"]


def test_a_changed_window_applies_to_the_next_batch_and_a_new_event_loop_gets_a_runner_of_its_own():
    recorder = Recorder()
    queue = BatchQueue(recorder, BatchWindow(max_requests=1, wait_s=5.0, quiet_s=5.0))

    async def pair() -> list[list[str]]:
        return await asyncio.gather(queue.submit(["a"]), queue.submit(["b"]))

    assert asyncio.run(pair()) == [["A"], ["B"]]
    queue.window = BatchWindow(max_requests=2, wait_s=5.0, quiet_s=0.05)
    assert asyncio.run(pair()) == [["A"], ["B"]]
    assert recorder.batches == [[["a"]], [["b"]], [["a"], ["b"]]]


def test_a_window_set_from_another_thread_applies_to_the_batch_already_waiting():
    recorder = Recorder()
    queue = BatchQueue(recorder, BatchWindow(max_requests=16, wait_s=5.0, quiet_s=5.0))

    async def run() -> list[str]:
        waiting = asyncio.create_task(queue.submit(["a"]))
        await asyncio.sleep(0.05)
        # as Serve may run reconfigure: in a worker thread
        await asyncio.to_thread(setattr, queue, "window", BatchWindow(max_requests=16, wait_s=5.0, quiet_s=0.01))
        return await waiting

    started = time.perf_counter()
    assert asyncio.run(run()) == ["A"]
    assert recorder.started[0] - started < 1.0


@pytest.mark.parametrize("fields", [(0, 1.0, 0.1), (4, -1.0, 0.1), (4, 1.0, -0.1)])
def test_a_window_out_of_range_is_refused(fields):
    with pytest.raises(ValueError, match="batch window"):
        BatchWindow(*fields)


def test_the_quiet_gap_does_not_start_a_batch_while_a_counted_request_is_on_its_way():
    recorder = Recorder()
    arrivals = Arrivals()
    queue = BatchQueue(recorder, BatchWindow(max_requests=16, wait_s=5.0, quiet_s=0.02), arrivals)

    async def request(name: str, comes_s: float, parsing_s: float) -> list[str]:
        await asyncio.sleep(comes_s)
        with arrivals.arriving():  # as the ingress counts a request from its first byte
            await asyncio.sleep(parsing_s)
            return await queue.submit([name])

    async def rejected() -> None:
        with arrivals.arriving():  # a request that fails validation never joins
            await asyncio.sleep(0.3)

    async def run() -> list[list[str] | None]:
        return await asyncio.gather(request("fast", 0.0, 0.0), request("slow", 0.0, 0.2), rejected(),
                                    request("late", 0.4, 0.0))

    started = time.perf_counter()
    assert asyncio.run(run()) == [["FAST"], ["SLOW"], None, ["LATE"]]
    # fast waits past its quiet gap for slow and for the rejected request, on their way, and no longer.
    assert recorder.batches == [[["fast"], ["slow"]], [["late"]]]
    assert 0.3 <= recorder.started[0] - started < 0.4
    assert arrivals.on_the_way == 0
