"""A job trained over 2 gloo ranks through the real worker (MODELMILL_TRAIN_PROCESSES=2): the same events as one
process, cancel stops both ranks, and a run whose rank dies fails the job cleanly (never a hang)."""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

from modelmill.service.worker.loop import Worker
from tests.service.conftest import create_job, training_jsonl, upload
from tests.service.test_worker import job_json, metric_steps, start_worker, supervised, wait_until

HP = supervised(n_epochs=1, batch_size=4, learning_rate_multiplier=1.0)


def _events(store, job_id: str) -> list[tuple[str, str]]:
    """Every event's type and message, oldest first, with the run-specific parts left out: ids, the ranks line,
    and metric values (a metrics event counts as its step and metric names; the ranks reduce in another order)."""
    skip = ("Training processes:",)
    return [(e.type, f"{e.data['step']}: {sorted(e.data)}" if e.type == "metrics" else e.message.replace(job_id, "JOB"))
            for e in store.events.all_for(job_id) if not e.message.startswith(skip)]


def test_a_two_rank_job_writes_the_events_of_a_one_rank_job(client, store, settings):
    from modelmill.ml import models

    models.ensure_base(settings.home, "modelmill-tiny")  # built before both jobs: neither says "built"
    train = upload(client, training_jsonl(12))
    valid = upload(client, training_jsonl(10), filename="valid.jsonl")
    no_eval = {"eval": "false"}  # the before/after eval is the same in both; it only adds time here
    one = create_job(client, train["id"], validation_file=valid["id"], seed=3, method=HP, metadata=no_eval)
    assert Worker(settings, store).run_once() == one["id"]
    two = create_job(client, train["id"], validation_file=valid["id"], seed=3, method=HP, metadata=no_eval)
    assert Worker(replace(settings, train_processes="2"), store).run_once() == two["id"]

    done = job_json(client, two["id"])
    assert done["status"] == "succeeded", done["error"]
    assert job_json(client, one["id"])["trained_tokens"] == done["trained_tokens"]
    ranks = [e for e in store.events.all_for(two["id"]) if e.message.startswith("Training processes:")]
    assert len(ranks) == 1 and ranks[0].data == {"processes": 2, "fsdp": False}
    assert "DDP over 2 processes" in ranks[0].message
    strip = lambda evs, ft: [(t, m.replace(ft, "FT")) for t, m in evs]  # noqa: E731
    assert strip(_events(store, two["id"]), done["fine_tuned_model"]) == \
        strip(_events(store, one["id"]), job_json(client, one["id"])["fine_tuned_model"])
    assert Path(store.jobs.get(two["id"]).adapter_dir, "adapter_model.safetensors").is_file()


def test_cancel_reaches_every_rank(client, store, settings):
    f = upload(client, training_jsonl(24))
    job = create_job(client, f["id"], method=supervised(n_epochs=3, batch_size=2, learning_rate_multiplier=1.0))
    t = start_worker(replace(settings, train_processes="2"), store)
    wait_until(lambda: metric_steps(store, job["id"]), timeout=180)
    at_cancel = max(metric_steps(store, job["id"]))
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").status_code == 200
    t.join(timeout=120)
    assert not t.is_alive()
    done = job_json(client, job["id"])
    assert done["status"] == "cancelled"
    assert max(metric_steps(store, job["id"])) <= at_cancel + 2
    assert not list(Path("/tmp").glob("mm-ranks-*/rank-*.pid"))  # no rank left behind


def test_a_killed_rank_fails_the_job_with_a_clear_error(client, store, settings):
    f = upload(client, training_jsonl(24))
    job = create_job(client, f["id"], method=supervised(n_epochs=3, batch_size=2, learning_rate_multiplier=1.0))
    t = start_worker(replace(settings, train_processes="2"), store)
    wait_until(lambda: metric_steps(store, job["id"]), timeout=180)
    pid = int(next(Path("/tmp").glob("mm-ranks-*/rank-1.pid")).read_text())
    os.kill(pid, signal.SIGKILL)
    t.join(timeout=120)
    assert not t.is_alive()
    done = job_json(client, job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "rank_failed", done["error"]
    assert "training process" in done["error"]["message"] and len(done["error"]["message"]) < 400
