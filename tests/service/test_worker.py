"""The worker on the real ml code with modelmill-tiny: train to succeeded, fail a bad file
with line numbers, cancel and pause within a step, resume after a crash from the checkpoint."""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
import time

import pytest

from modelmill.service.worker.loop import Worker
from tests.service.conftest import chat_line, create_job, training_jsonl, upload
from tests.service.helpers import job_json, run_worker_until_first_checkpoint, train_bad_file, train_continuing
from tests.spec_check import assert_matches

TINY_HP = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0}


def supervised(**hp) -> dict:
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def metric_steps(store, job_id: str) -> list[int]:
    return [e.data["step"] for e in store.events.all_for(job_id, type="metrics")]


def wait_until(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_job_trains_to_succeeded_and_its_models_serve(client, store, settings):
    train = upload(client, training_jsonl(12))
    valid = upload(client, training_jsonl(10), filename="valid.jsonl")
    job = create_job(client, train["id"], validation_file=valid["id"], suffix="unit", seed=1,
                     method=supervised(n_epochs=1, batch_size=4, learning_rate_multiplier="auto"))
    assert Worker(settings, store).run_once() == job["id"]

    done = job_json(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["fine_tuned_model"] == f"ft:modelmill-tiny:modelmill:unit:{job['id'][6:14]}"
    # 12 examples: "auto" learning_rate_multiplier is the small-data 3.0 (ml/sft.py)
    assert done["hyperparameters"] == {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 3.0}
    assert done["method"]["supervised"]["hyperparameters"] == done["hyperparameters"]
    assert done["trained_tokens"] > 0 and done["finished_at"] >= done["created_at"]
    assert done["estimated_finish"] is None

    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()
    assert_matches(events, "ListFineTuningJobEventsResponse")
    metrics = [e["data"] for e in reversed(events["data"]) if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(m["total_steps"] == 3 and "train_loss" in m for m in metrics)
    assert "full_valid_loss" in metrics[-1]
    messages = [e["message"] for e in events["data"]]
    assert "The job has successfully completed" == messages[0]

    ckpts = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert_matches(ckpts, "ListFineTuningJobCheckpointsResponse")
    ckpt_model = ckpts["data"][0]["fine_tuned_model_checkpoint"]
    assert ckpt_model == f"{done['fine_tuned_model']}:ckpt-step-3"

    results = client.get(f"/v1/files/{done['result_files'][0]}").json()
    assert results["purpose"] == "fine-tune-results"
    # base64-encoded CSV, as OpenAI's result files are
    text = base64.b64decode(client.get(f"/v1/files/{results['id']}/content").text).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]

    models = client.get("/v1/models").json()
    assert_matches(models, "ListModelsResponse")
    assert {done["fine_tuned_model"], ckpt_model} <= {m["id"] for m in models["data"]}
    for model in (done["fine_tuned_model"], ckpt_model):
        got = client.get(f"/v1/models/{model}").json()
        assert_matches(got, "Model")
        out = client.post("/v1/chat/completions", json={"model": model, "max_tokens": 3, "temperature": 0,
                                                        "messages": [{"role": "user", "content": "1 plus 1?"}]})
        assert out.status_code == 200, out.text
        assert_matches(out.json(), "CreateChatCompletionResponse")
        assert out.json()["model"] == model

    # An ft: model is a starting point: the new job continues its adapter on the same base.
    second = train_continuing(client, store, settings, train["id"], done["fine_tuned_model"], supervised(**TINY_HP))
    assert second["fine_tuned_model"].startswith("ft:modelmill-tiny:modelmill::")

    deleted = client.delete(f"/v1/models/{done['fine_tuned_model']}").json()
    assert_matches(deleted, "DeleteModelResponse")
    assert client.get(f"/v1/models/{done['fine_tuned_model']}").status_code == 404
    assert client.get(f"/v1/models/{ckpt_model}").status_code == 200  # checkpoints stay


def bad_role_file() -> bytes:
    lines = [chat_line(i) for i in range(12)]
    ex = json.loads(lines[6])
    ex["messages"][2]["role"] = "bot"
    lines[6] = json.dumps(ex)
    lines[9] = "{not json"
    return ("\n".join(lines) + "\n").encode()


def test_bad_training_file_fails_with_line_numbers(client, store, settings):
    bad = upload(client, bad_role_file())
    failed = train_bad_file(client, store, settings, bad["id"], supervised(**TINY_HP))
    err = failed["error"]
    assert "line 7: messages[2].role" in err["message"] and "'bot'" in err["message"]
    assert "line 10" in err["message"]
    assert any(e.level == "error" for e in store.events.all_for(failed["id"]))


def test_bad_validation_file_names_validation_file(client, store, settings):
    good = upload(client, training_jsonl())
    bad = upload(client, b"[1, 2]\n", filename="valid.jsonl")
    job = create_job(client, good["id"], validation_file=bad["id"], method=supervised(**TINY_HP))
    Worker(settings, store).run_once()
    err = job_json(client, job["id"])["error"]
    assert err["param"] == "validation_file" and "line 1" in err["message"]


def test_deleted_training_file_fails_the_job_cleanly(client, store, settings):
    f = upload(client, training_jsonl())
    job = create_job(client, f["id"])
    client.delete(f"/v1/files/{f['id']}")
    Worker(settings, store).run_once()
    err = job_json(client, job["id"])["error"]
    assert err["param"] == "training_file" and err["code"] == "file_not_found"


def start_worker(settings, store) -> threading.Thread:
    t = threading.Thread(target=Worker(settings, store).run_once, daemon=True)
    t.start()
    return t


@pytest.fixture
def long_job(client):
    """A job of 24 steps (24 examples, batch 1): long enough to stop in the middle."""
    f = upload(client, training_jsonl(24))
    return create_job(client, f["id"], method=supervised(n_epochs=1, batch_size=1, learning_rate_multiplier=1.0))


def test_cancel_takes_effect_within_a_step(client, store, settings, long_job):
    t = start_worker(settings, store)
    wait_until(lambda: metric_steps(store, long_job["id"]))
    at_cancel = max(metric_steps(store, long_job["id"]))
    assert client.post(f"/v1/fine_tuning/jobs/{long_job['id']}/cancel").status_code == 200
    t.join(timeout=60)
    done = job_json(client, long_job["id"])
    assert done["status"] == "cancelled" and done["fine_tuned_model"] is None
    assert max(metric_steps(store, long_job["id"])) <= at_cancel + 2  # the step in flight, then stop


def test_pause_checkpoints_and_resume_continues(client, store, settings, long_job):
    job_id = long_job["id"]
    t = start_worker(settings, store)
    wait_until(lambda: metric_steps(store, job_id))
    paused = client.post(f"/v1/fine_tuning/jobs/{job_id}/pause").json()
    assert paused["status"] == "paused"  # as OpenAI answers; the worker checkpoints at the next step
    t.join(timeout=60)
    assert store.jobs.get(job_id).status == "paused" and job_json(client, job_id)["status"] == "paused"
    steps_before = metric_steps(store, job_id)
    assert steps_before and max(steps_before) < 24
    assert max(c.step_number for c in store.checkpoints.all_for(job_id)) == max(steps_before)

    assert client.post(f"/v1/fine_tuning/jobs/{job_id}/resume").json()["status"] == "queued"
    Worker(settings, store).run_once()
    done = job_json(client, job_id)
    assert done["status"] == "succeeded", done["error"]
    steps = metric_steps(store, job_id)
    assert steps == list(range(1, 25))  # continued after the pause step; none trained twice


def test_new_worker_resumes_a_dead_workers_job_from_its_checkpoint(client, store, settings, monkeypatch):
    f = upload(client, training_jsonl(12))
    job = create_job(client, f["id"], method=supervised(n_epochs=3, batch_size=4, learning_rate_multiplier=1.0))
    run_worker_until_first_checkpoint(settings, store, monkeypatch, worker_id="dead")
    record = store.jobs.get(job["id"])
    assert record.status == "running" and record.lease_owner == "dead"
    assert Worker(settings, store).run_once() is None  # its lease is still live: not claimable

    store.db.execute("UPDATE jobs SET lease_expires_at = 0 WHERE id = ?", (job["id"],))  # time passes
    assert Worker(settings, store, worker_id="next").run_once() == job["id"]
    done = job_json(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert metric_steps(store, job["id"]) == list(range(1, 10))  # 3 epochs x 3 steps, each once
    messages = [e.message for e in store.events.all_for(job["id"])]
    assert any("Resuming job" in m for m in messages)


def test_a_job_that_keeps_killing_its_workers_is_failed(client, store, settings):
    f = upload(client, training_jsonl())
    job = create_job(client, f["id"])
    store.db.execute("UPDATE jobs SET status = 'running', reclaims = 3 WHERE id = ?", (job["id"],))
    Worker(settings, store).run_once()  # the 4th reclaim of a job that was running when its worker died
    failed = job_json(client, job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "worker_lost"


def test_rft_grader_context_judges_with_the_processes_one_sampler(store, settings):
    """A score_model grader in an RFT job asks the worker's judge, which answers with ModelMill's own
    model through the process's one Sampler, which eval runs and the API share (one model cache)."""
    from modelmill.ml.graders import grade
    from modelmill.service.api import deps
    from modelmill.service.api.app import create_app
    from modelmill.service.evals import runner
    from modelmill.service.models.sampler import shared_sampler

    context = runner.grader_context(settings, store, None)  # what FineTuneTask gives an RFT job's config
    grader = {"type": "score_model", "name": "judge", "model": "modelmill-tiny", "range": [0, 1],
              "input": [{"role": "user", "content": "Rate {{sample.output_text}} from 0 to 1."}],
              "sampling_params": {"temperature": 0, "max_completions_tokens": 4}}
    result = grade(grader, "an answer", {}, context=context)
    assert list(result.model_grader_token_usage_per_model) == ["modelmill-tiny"]  # answered locally
    assert result.token_usage and result.token_usage > 0
    assert any(key[1] is None for key in shared_sampler(settings).cached())  # the base model, loaded there
    assert deps.app_sampler(create_app(settings, store=store)) is shared_sampler(settings)  # the API's too
