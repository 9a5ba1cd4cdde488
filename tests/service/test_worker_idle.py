"""What an idle worker does between jobs (service/worker/loop.py): it notices a new job within
milliseconds instead of at its next poll, and warm_up() readies the process before the first job."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from modelmill.service.worker import loop as worker_module
from modelmill.service.worker.loop import Worker
from tests.service.conftest import DIALECTS, create_job, training_jsonl, upload


def idle_in_thread(w: Worker) -> tuple[threading.Thread, list[float]]:
    took: list[float] = []

    def idle():
        started = time.monotonic()
        w._idle()
        took.append(time.monotonic() - started)

    t = threading.Thread(target=idle)
    t.start()
    return t, took


@pytest.mark.parametrize("dialect", DIALECTS)  # SQLite: data_version moves; Postgres: LISTEN/NOTIFY
def test_an_idle_worker_wakes_when_the_api_creates_a_job(client, store, settings):
    train = upload(client, training_jsonl(12))
    w = Worker(settings.with_(poll_seconds=30.0), store)
    t, took = idle_in_thread(w)
    time.sleep(0.3)  # it is waiting now
    assert t.is_alive()
    create_job(client, train["id"])  # a commit on the API's connection
    t.join(timeout=5)
    assert not t.is_alive() and took[0] < 5  # not the 30 s poll


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_idle_worker_still_polls_and_stops_at_once(store, settings):
    w = Worker(settings.with_(poll_seconds=0.3), store)
    started = time.monotonic()
    w._idle()  # nothing changes: back after poll_seconds, for the periodic claim
    assert 0.3 <= time.monotonic() - started < 3

    w = Worker(settings.with_(poll_seconds=30.0), store)
    t, took = idle_in_thread(w)
    time.sleep(0.1)
    w.stop_event.set()
    t.join(timeout=5)
    assert not t.is_alive() and took[0] < 5


def test_warm_up_imports_the_training_stack():
    worker_module.warm_up()
    assert {"torch", "transformers", "peft", "datasets", "trl.trainer.sft_trainer", "modelmill.ml.sft"} \
        <= set(sys.modules)
