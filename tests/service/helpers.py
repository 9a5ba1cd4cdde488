"""Small helpers shared by several tests/service test files (plain functions, not fixtures: the
fixtures live in conftest.py). The worker is imported inside the job helpers: files that only need
run_async stay quick to import."""

from __future__ import annotations

import asyncio
import concurrent.futures

import pytest

from tests.service.conftest import create_job
from tests.spec_check import assert_matches


def job_json(client, job_id: str) -> dict:
    """GET the job, checked against OpenAI's FineTuningJob schema."""
    body = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert_matches(body, "FineTuningJob")
    return body


def train_continuing(client, store, settings, file_id: str, ft_model: str, method: dict) -> dict:
    """A job that continues ft_model's adapter (on its base, modelmill-tiny), trained by one worker pass:
    its JSON, once it has succeeded."""
    from modelmill.service.worker.loop import Worker

    job = create_job(client, file_id, model=ft_model, method=method)
    record = store.jobs.get(job["id"])
    assert record.base_model == "modelmill-tiny" and record.init_adapter.endswith("/adapter")
    Worker(settings, store).run_once()
    done = job_json(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["model"] == ft_model
    return done


def train_bad_file(client, store, settings, file_id: str, method: dict) -> dict:
    """A job on a training file with bad lines, after one worker pass: its JSON, checked to have failed
    with the invalid_training_file error on training_file and no model."""
    from modelmill.service.worker.loop import Worker

    job = create_job(client, file_id, method=method)
    Worker(settings, store).run_once()
    failed = job_json(client, job["id"])
    assert failed["status"] == "failed" and failed["fine_tuned_model"] is None
    assert failed["error"]["param"] == "training_file" and failed["error"]["code"] == "invalid_training_file"
    return failed


def run_async(coro):
    """asyncio.run(coro) on a thread of its own: an earlier test in the session (playwright's sync API)
    can leave this thread marked as running an event loop, where asyncio.run refuses to start."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class Crash(BaseException):
    """Stands in for SIGKILL: escapes every handler, so the worker writes nothing more."""


def run_worker_until_first_checkpoint(settings, store, monkeypatch, worker_id: str = "dead") -> None:
    """Run one worker pass that dies (Crash) right after writing its first checkpoint, leaving the
    job running under `worker_id`'s lease; StoreReporter is restored afterwards."""
    from modelmill.service.jobs.reporter import StoreReporter
    from modelmill.service.worker.loop import Worker

    real = StoreReporter.on_checkpoint

    def crash(self, step, path, metrics):
        real(self, step, path, metrics)
        raise Crash()

    monkeypatch.setattr(StoreReporter, "on_checkpoint", crash)
    with pytest.raises(Crash):
        Worker(settings, store, worker_id=worker_id).run_once()
    monkeypatch.setattr(StoreReporter, "on_checkpoint", real)
