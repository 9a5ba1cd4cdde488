"""The event-loop lag probe (api/loop_lag.py): a loop held by sync work shows as lag in the histogram
of GET /metrics, and the watchdog names the code that held it."""

from __future__ import annotations

import asyncio
import time

from modelmill.service.api import loop_lag
from modelmill.service.core import metrics
from tests.service.helpers import run_async


def _bucket_count(le: float) -> float:
    """modelmill_event_loop_lag_seconds' cumulative count of observations <= le."""
    for metric in metrics.EVENT_LOOP_LAG.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket") and float(sample.labels["le"]) == le:
                return sample.value
    raise AssertionError(f"no bucket le={le}")


def hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # sync work on the loop: what the probe is there to catch


def test_a_held_loop_is_lag_and_the_watchdog_names_the_holder():
    over_before = _bucket_count(float("inf")) - _bucket_count(0.3)

    async def main():
        async with loop_lag.running() as lag:
            await asyncio.sleep(0.1)  # a few ordinary ticks
            hold_the_loop(0.45)
            await asyncio.sleep(0.05)  # the probe wakes, late
        return lag.summary()

    s = run_async(main())
    assert s["samples"] >= 3 and s["p50_ms"] < 100
    assert s["max_ms"] >= 400  # the tick due during the hold woke ~440 ms late
    assert _bucket_count(float("inf")) - _bucket_count(0.3) >= over_before + 1
    assert s["stalls"] == 1, s
    [(place, n)] = s["stall_places"]
    assert n == 1 and "hold_the_loop" in place and "test_loop_lag.py" in place, place
    [(ms, at, where, others)] = s["longest"]
    assert ms >= 400 and 0.05 < at < 1 and where == place and isinstance(others, list)


def test_the_watchdog_lists_the_busy_threads_of_a_stall():
    import threading

    stop = threading.Event()

    def spin():  # a thread busy in Python code while the loop stalls
        while not stop.is_set():
            sum(range(1000))

    busy = threading.Thread(target=spin, name="busy-spinner")
    busy.start()

    async def main():
        async with loop_lag.running() as lag:
            await asyncio.sleep(0.05)
            hold_the_loop(0.4)
            await asyncio.sleep(0.05)
        return lag.summary()

    try:
        s = run_async(main())
    finally:
        stop.set()
        busy.join()
    [(_, _, _, others)] = s["longest"]
    assert any(o.startswith("busy-spinner: ") and "spin" in o for o in others), others


def test_the_app_measures_its_loop_and_serves_the_histogram(client):
    time.sleep(0.1)
    assert client.app.state.loop_lag.summary()["samples"] > 0
    body = client.get("/metrics").text
    assert "modelmill_event_loop_lag_seconds_bucket" in body and "modelmill_event_loop_lag_seconds_count" in body


def test_the_request_pool_has_settings_api_threads(settings, store):
    import dataclasses

    import anyio.to_thread
    from fastapi.testclient import TestClient

    from modelmill.service.api.app import create_app

    with TestClient(create_app(dataclasses.replace(settings, api_threads=3), store=store)) as c:
        assert c.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().total_tokens) == 3
        assert c.get("/v1/files").status_code == 200


def test_serve_builds_every_route_before_the_first_request(settings, store, monkeypatch):
    """FastAPI builds a route's dependency tree on the first request that walks past it, on the event
    loop; `serve` (warm_routes=True) does that at start-up, so no request pays for it."""
    import fastapi.routing
    from fastapi.testclient import TestClient

    from modelmill.service.api.app import create_app

    built = []
    real = fastapi.routing.get_dependant
    monkeypatch.setattr(fastapi.routing, "get_dependant", lambda *a, **kw: built.append(kw.get("path")) or real(*a, **kw))
    with TestClient(create_app(settings, store=store, warm_routes=True)) as c:
        at_start = len(built)
        assert at_start > 20  # every route of the app, at start-up
        assert c.get("/v1/files").status_code == 200 and c.get("/v1/models").status_code == 200
        assert len(built) == at_start  # nothing left to build for the requests
