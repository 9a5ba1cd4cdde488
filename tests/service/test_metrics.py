"""GET /metrics (service/core/metrics.py): who may read it (MODELMILL_METRICS), the store-derived gauges
computed at scrape time, and the in-process metrics, parsed with prometheus_client's own parser.
A scrape from a live server after a real job and chat is tests/e2e/test_operations.py."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from modelmill.service.core import metrics
from modelmill.service.api.app import create_app
from tests.service.conftest import create_job, training_jsonl, upload


def families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(fams, name: str, **labels) -> float:
    """The sum of samples named `name` (a family's own name, or with _total, _count, _sum) with these labels."""
    return sum(s.value for samples in fams.values() for s in samples
               if s.name == name and labels.items() <= s.labels.items())


@pytest.mark.parametrize("mode, with_key, status", [
    ("off", True, 404), ("key", False, 401), ("key", True, 200), ("public", False, 200)])
def test_access_follows_the_setting(settings, store, mode, with_key, status):
    _, key = store.keys.create("scraper")
    with TestClient(create_app(settings.with_(metrics=mode), store=store)) as c:
        r = c.get("/metrics", headers={"Authorization": f"Bearer {key}"} if with_key else {})
    assert r.status_code == status, r.text
    if status == 200:
        assert "modelmill_jobs" in families(r.text)
    else:
        assert r.json()["error"]["code"] in ("not_found", "invalid_api_key", "missing_api_key")


def test_jobs_and_queues_come_from_the_store_at_scrape_time(client, store):
    file_id = upload(client, training_jsonl(12))["id"]
    jobs = [create_job(client, file_id)["id"] for _ in range(3)]
    store.jobs.cancel(jobs[2])
    fams = families(client.get("/metrics").text)
    assert value(fams, "modelmill_jobs", status="validating_files", method="supervised") == 2
    assert value(fams, "modelmill_jobs", status="cancelled", method="supervised") == 1
    assert value(fams, "modelmill_jobs", status="running", method="supervised") == 0  # zeros show too
    assert value(fams, "modelmill_queue_depth", queue="fine_tuning_jobs") == 2
    assert value(fams, "modelmill_queue_oldest_age_seconds", queue="fine_tuning_jobs") >= 0
    assert value(fams, "modelmill_queue_depth", queue="eval_runs") == 0

    lease = store.job_queue(30.0).claim("w1")  # a worker holds one: it no longer waits
    fams = families(client.get("/metrics").text)
    assert value(fams, "modelmill_queue_depth", queue="fine_tuning_jobs") == 1
    store.job_queue(30.0).finish(lease, "succeeded", trained_tokens=777)
    fams = families(client.get("/metrics").text)
    assert value(fams, "modelmill_trained_tokens_total", method="supervised") == 777
    assert value(fams, "modelmill_jobs", status="succeeded", method="supervised") == 1


def test_in_process_metrics_and_the_ml_observers(client):
    from modelmill.ml import observers

    before = families(client.get("/metrics").text)
    observers.notify(observers.BATCH, 3, 5)  # what ml/batching.py reports per batch
    observers.notify(observers.GRADE, "string_check", 4, 1, 0.01)  # and ml/graders/engine.py per call
    metrics.webhook_delivery("retry")
    metrics.chat_done(True, 0.2, 10, 7)
    after = families(client.get("/metrics").text)

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("modelmill_sampler_batch_rows_sum") == 5 and grew("modelmill_sampler_batch_requests_sum") == 3
    assert grew("modelmill_grader_samples_total", type="string_check") == 4
    assert grew("modelmill_grader_errors_total", type="string_check") == 1
    assert grew("modelmill_webhook_delivery_attempts_total", outcome="retry") == 1
    assert grew("modelmill_chat_tokens_total", kind="completion") == 7
    assert grew("modelmill_chat_request_seconds_count", stream="true") == 1


def test_a_broken_observer_never_breaks_the_work():
    from modelmill.ml import observers

    def broken(*args):
        raise RuntimeError("boom")

    observers.BATCH.append(broken)
    try:
        observers.notify(observers.BATCH, 1, 1)  # logged, not raised
    finally:
        observers.BATCH.remove(broken)


def test_multiprocess_mode_adds_up_a_worker_processs_metrics(tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR set for every process (docs/operations.md), a worker process's
    step times show in the API process's /metrics body."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"), MODELMILL_HOME=str(tmp_path / "home"))
    (tmp_path / "prom").mkdir()
    worker = "from modelmill.service.core import metrics; metrics.train_step('dpo', 0.5); metrics.train_step('dpo', 1.5)"
    subprocess.run([sys.executable, "-c", worker], env=env, check=True, timeout=120)
    api = ("from modelmill.settings import Settings; from modelmill.service.core import metrics;"
           "from modelmill.service.store import open_store;"
           "print(metrics.render(open_store(Settings.from_env().ensure_dirs()))[0].decode())")
    out = subprocess.run([sys.executable, "-c", api], env=env, check=True, timeout=120, capture_output=True, text=True)
    fams = families(out.stdout)
    assert value(fams, "modelmill_train_step_seconds_count", method="dpo") == 2
    assert value(fams, "modelmill_train_step_seconds_sum", method="dpo") == 2.0
    assert value(fams, "modelmill_jobs", status="queued", method="supervised") == 0  # the store's part is there too
