"""service/api/disconnect.py without a server: a client that goes away sets the work's cancel event
while it runs, drops it while it is queued, and a stream's consumer going away ends its producer."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from modelmill import errors
from modelmill.service.api.disconnect import run_until_disconnect, stream_until_disconnect
from modelmill.service.core.limits import ProjectExecutor
from tests.service.helpers import run_async


class Client:
    """Stands in for a Starlette Request: disconnected once `gone` is set."""

    def __init__(self):
        self.gone = threading.Event()

    async def is_disconnected(self) -> bool:
        return self.gone.is_set()


def work_until(cancel: threading.Event, ran: list) -> str:
    """A generation: runs until cancelled (at most 30 s)."""
    ran.append(time.monotonic())
    assert cancel.wait(30)
    return "cut short"


def test_disconnect_cancels_running_work_and_drops_queued_work():
    executor = ProjectExecutor("t", max_workers=1, per_project=1, max_queued=4)
    client, ran = Client(), []
    running, queued = threading.Event(), threading.Event()

    async def main():
        first = asyncio.ensure_future(run_until_disconnect(executor, "p", client, running, work_until, running, ran))
        second = asyncio.ensure_future(run_until_disconnect(executor, "p", client, queued, work_until, queued, ran))
        await asyncio.sleep(0.3)
        assert executor.stats()["queued"] == 1
        client.gone.set()
        return await asyncio.gather(first, second, return_exceptions=True)

    t0 = time.monotonic()
    first, second = run_async(main())
    assert time.monotonic() - t0 < 5  # the running one stopped at once, nothing waited 30 s
    assert isinstance(first, errors.RequestCancelledError) and "while" in first.message
    assert isinstance(second, errors.RequestCancelledError) and "before" in second.message
    assert running.is_set() and len(ran) == 1  # the queued one never started
    executor.shutdown()


def test_a_result_comes_back_when_the_client_stays():
    executor = ProjectExecutor("t", max_workers=1, per_project=1, max_queued=1)
    cancel = threading.Event()
    assert run_async(run_until_disconnect(executor, "p", Client(), cancel, lambda: 42)) == 42
    assert not cancel.is_set()
    executor.shutdown()


def test_a_stream_whose_consumer_goes_away_sets_cancel():
    executor = ProjectExecutor("t", max_workers=1, per_project=1, max_queued=1)
    cancel, produced = threading.Event(), []

    def chunks():
        for i in range(1000):
            if cancel.is_set():
                return
            produced.append(i)
            yield f"data: {i}\n\n"
            time.sleep(0.01)

    async def main():
        body = stream_until_disconnect(executor, "p", cancel, chunks)
        got = [await body.__anext__() for _ in range(3)]
        await body.aclose()  # what Starlette's cancellation does to the body iterator
        return got

    assert run_async(main()) == ["data: 0\n\n", "data: 1\n\n", "data: 2\n\n"]
    assert cancel.is_set()
    deadline = time.monotonic() + 5
    while executor.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert executor.stats()["running"] == 0 and len(produced) < 1000
    executor.shutdown()


def test_a_full_queue_is_a_429_before_a_stream_starts():
    executor = ProjectExecutor("t", max_workers=1, per_project=1, max_queued=0)
    gate = threading.Event()
    executor.submit("p", gate.wait, 10)

    async def main():
        stream_until_disconnect(executor, "p", threading.Event(), lambda: iter(["x"]))

    with pytest.raises(errors.RateLimitError):
        run_async(main())
    gate.set()
    executor.shutdown()
