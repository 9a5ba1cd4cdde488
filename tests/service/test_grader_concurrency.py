"""Graders off the request thread pool (service/core/limits.py): a global and a per-project cap, one FIFO
queue, 429 past the queue bound, queued work dropped when its client goes. Live: with more slow
python graders in flight than FastAPI's whole thread pool (40), GET /v1/files stays fast."""

from __future__ import annotations

import asyncio
import socket
import statistics
import threading
import time

import httpx
import pytest
import uvicorn

from modelmill import errors
from modelmill.ml.graders import sandbox
from modelmill.service.api.app import create_app
from modelmill.service.core.limits import ProjectExecutor
from tests.service.helpers import run_async
from tests.spec_check import assert_matches


class Gate:
    """Tasks that block until released, recording the order they started in."""

    def __init__(self):
        self.started: list[str] = []
        self.release = threading.Event()

    def task(self, name: str) -> str:
        self.started.append(name)
        assert self.release.wait(10)
        return name


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_caps_fifo_and_fairness():
    ex, gate = ProjectExecutor("graders", max_workers=3, per_project=2, max_queued=10), Gate()
    futures = [ex.submit("a", gate.task, f"a{i}") for i in range(4)] + [ex.submit("b", gate.task, "b0")]
    wait_for(lambda: len(gate.started) == 3)
    # a's third and fourth wait for a's cap; b's first is not stuck behind them.
    assert sorted(gate.started) == ["a0", "a1", "b0"]
    assert ex.stats() == {"running": 3, "queued": 2, "running_by_project": {"a": 2, "b": 1},
                          "queued_by_project": {"a": 2}}
    gate.release.set()
    assert [f.result(10) for f in futures] == ["a0", "a1", "a2", "a3", "b0"]
    assert gate.started.index("a2") < gate.started.index("a3")  # FIFO within the project
    wait_for(lambda: ex.stats()["running"] == 0)
    ex.shutdown()


def test_over_the_queue_bound_is_a_429_in_openais_shape():
    ex, gate = ProjectExecutor("graders", max_workers=1, per_project=1, max_queued=2), Gate()
    held = [ex.submit("a", gate.task, str(i)) for i in range(3)]  # 1 running, 2 queued
    with pytest.raises(errors.RateLimitError) as refused:
        ex.submit("a", gate.task, "over")
    e = refused.value
    assert e.status == 429 and e.headers == {"Retry-After": "1"}
    body = e.to_dict()
    assert body["error"]["type"] == "requests" and body["error"]["code"] == "rate_limit_exceeded"
    assert "1 running and 2 queued" in body["error"]["message"]
    other = ex.submit("b", lambda: "other project")  # another project's queue bound is its own
    assert ex.stats()["queued_by_project"] == {"a": 2, "b": 1}
    held[2].cancel()  # a queued task cancelled: out of the queue at once
    assert ex.stats()["queued_by_project"] == {"a": 1, "b": 1}
    gate.release.set()
    assert [f.result(10) for f in held[:2]] + [other.result(10)] == ["0", "1", "other project"]
    ex.shutdown()


def test_shutdown_cancels_what_is_queued():
    ex, gate = ProjectExecutor("graders", max_workers=1, per_project=1, max_queued=5), Gate()
    running, queued = ex.submit("a", gate.task, "r"), ex.submit("a", gate.task, "q")
    wait_for(lambda: gate.started == ["r"])
    ex.shutdown()
    assert queued.cancelled()
    gate.release.set()
    assert running.result(10) == "r"


# --- live: a real server on 127.0.0.1 --------------------------------------------------------------

SLOW = {"type": "python", "name": "slow", "source": "import time\ndef grade(sample, item):\n"
                                                    "    time.sleep(1.0)\n    return 1.0\n"}
IN_FLIGHT = 44  # more than FastAPI's request thread pool (40 threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live(settings, store):
    settings = settings.with_(grader_concurrency=2, grader_project_concurrency=2, grader_queue=IN_FLIGHT - 2)
    app = create_app(settings, store=store)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.skipif(not sandbox.available(), reason=f"sandbox unavailable: {sandbox.unavailable_reason()}")
def test_metadata_stays_fast_while_slow_graders_queue(live):
    app, base = live
    run = {"grader": SLOW, "model_sample": "x", "item": {}}

    async def scenario():
        limits = httpx.Limits(max_connections=IN_FLIGHT + 5)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as graders_client:
            in_flight = [asyncio.create_task(graders_client.post("/v1/fine_tuning/alpha/graders/run", json=run))
                         for _ in range(IN_FLIGHT)]
            deadline = time.monotonic() + 20
            while getattr(app.state, "grader_executor", None) is None or \
                    sum(app.state.grader_executor.stats()[k] for k in ("running", "queued")) < IN_FLIGHT:
                assert time.monotonic() < deadline, "the graders did not all arrive"
                await asyncio.sleep(0.02)
            stats = app.state.grader_executor.stats()
            assert stats["running"] == 2 and stats["queued"] == IN_FLIGHT - 2, stats

            async with httpx.AsyncClient(base_url=base, timeout=30) as other:
                over = await other.post("/v1/fine_tuning/alpha/graders/run", json=run)
                timings = []
                for _ in range(3):
                    started = time.perf_counter()
                    files = await other.get("/v1/files")
                    timings.append(time.perf_counter() - started)
                    assert files.status_code == 200, files.text
            for task in in_flight:  # the client gives up: its queued requests leave the queue
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        return over, timings

    over, timings = run_async(scenario())
    assert over.status_code == 429 and over.headers["retry-after"] == "1", over.text
    assert_matches(over.json(), "ErrorResponse")
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    print(f"GET /v1/files with {IN_FLIGHT} slow graders in flight: {[round(t, 3) for t in timings]} s")
    assert statistics.median(timings) < 0.5, timings
    wait_for(lambda: app.state.grader_executor.stats()["queued"] == 0, timeout=5)
