"""A job whose error text is hostile (a python grader raising "\\ud800", a NUL) still ends `failed`, with
a sanitised message, on the first claim: it used to crash the worker at every claim (SQLite cannot
encode a lone surrogate) until the job ended `worker_lost`. Also: the sandbox itself hands back
storable text, and graders/run answers 200 for such a grader."""

from __future__ import annotations

import pytest

from modelmill import errors
from modelmill.ml.graders import sandbox
from modelmill.service.store.text import clean
from modelmill.service.jobs.runner import FineTuneTask
from modelmill.service.worker.loop import Worker
from tests.service.conftest import create_job, training_jsonl, upload
from tests.spec_check import assert_matches

HOSTILE = "grader said \ud800 and \udfff\x00 then stopped"


def test_clean_replaces_only_unstorable_characters():
    assert clean(HOSTILE) == "grader said \ufffd and \ufffd\ufffd then stopped"
    assert clean({"k\ud800": ["a\x00", ("ok", 1.5)], "n": None}) == {"k\ufffd": ["a\ufffd", ("ok", 1.5)], "n": None}
    assert clean("emoji 😀 stays") == "emoji 😀 stays"


@pytest.fixture
def failing_train(monkeypatch):
    """The job's training raises what RFT raises when the grader fails, quoting the grader's error."""
    def train(self, lease, job, config, reporter):
        reporter.on_event("warn", f"sample 0: python_grader_runtime_error: ValueError: {HOSTILE}")
        raise errors.GraderFailedError(f"The grader failed on every sample; e.g. ValueError: {HOSTILE}")

    monkeypatch.setattr(FineTuneTask, "_prepare", lambda self, lease, job, reporter: None)
    monkeypatch.setattr(FineTuneTask, "_train", train)


def test_hostile_error_text_fails_the_job_on_the_first_claim(client, store, settings, failing_train):
    job = create_job(client, upload(client, training_jsonl())["id"])
    assert Worker(settings, store).run_once() == job["id"]  # no exception out of the worker

    body = client.get(f"/v1/fine_tuning/jobs/{job['id']}")
    assert body.status_code == 200, body.text
    failed = body.json()
    assert_matches(failed, "FineTuningJob")
    assert failed["status"] == "failed" and failed["error"]["code"] == "grader_error"
    assert "\ufffd" in failed["error"]["message"] and "then stopped" in failed["error"]["message"]
    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events")
    assert events.status_code == 200, events.text
    messages = [e["message"] for e in events.json()["data"]]
    assert any("grader said \ufffd" in m for m in messages)
    assert Worker(settings, store).run_once() is None  # nothing left to reclaim: no worker_lost loop


def test_a_failure_the_store_refuses_is_still_recorded(client, store, settings, failing_train, monkeypatch):
    """Should a write refuse the text anyway, the job fails with a plain message instead of looping."""
    job = create_job(client, upload(client, training_jsonl())["id"])
    real_add_event = store.job_queue(settings.lease_seconds).__class__.add_event

    def refusing(self, lease, level, message, **kw):
        if level == "error":
            raise UnicodeEncodeError("utf-8", message, 0, 1, "surrogates not allowed")
        return real_add_event(self, lease, level, message, **kw)

    monkeypatch.setattr(store.job_queue(settings.lease_seconds).__class__, "add_event", refusing)
    assert Worker(settings, store).run_once() == job["id"]
    failed = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "grader_error"
    assert failed["error"]["message"].startswith("The job failed, but its error message could not be stored")


needs_sandbox = pytest.mark.skipif(not sandbox.available(), reason=f"sandbox unavailable: {sandbox.unavailable_reason()}")
SURROGATE_GRADER = "def grade(sample, item):\n    raise ValueError('bad \\ud800 text\\x00')\n"


@needs_sandbox
def test_sandbox_returns_storable_error_text():
    outcome = sandbox.run_python_grader(SURROGATE_GRADER, [{}], [{}])[0]
    assert outcome.error == sandbox.RUNTIME_ERROR
    assert "bad \ufffd text\ufffd" in outcome.details
    outcome.details.encode("utf-8")  # strict: would raise on a lone surrogate


@needs_sandbox
def test_graders_run_with_hostile_error_text_is_a_200(client):
    r = client.post("/v1/fine_tuning/alpha/graders/run",
                    json={"grader": {"type": "python", "name": "py", "source": SURROGATE_GRADER},
                          "model_sample": "x", "item": {}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metadata"]["errors"]["python_grader_runtime_error"] is True
    assert "\ufffd" in body["metadata"]["errors"]["python_grader_runtime_error_details"]
