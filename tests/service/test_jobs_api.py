"""/v1/fine_tuning/jobs without a worker: create, validate the request, list/filter/page,
retrieve, cancel/pause/resume transitions, events and checkpoints. Every object is checked
against OpenAI's schemas."""

from __future__ import annotations

import pytest

from tests.service.conftest import create_job, training_jsonl, upload
from tests.spec_check import assert_matches


@pytest.fixture
def train_file(client):
    return upload(client, training_jsonl())


def test_create_shows_the_request_and_matches_the_spec(client, train_file):
    job = create_job(client, train_file["id"], suffix="mine", seed=7, metadata={"team": "a"},
                     method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    assert_matches(job, "FineTuningJob")
    assert job["status"] == "validating_files" and job["object"] == "fine_tuning.job"
    assert job["model"] == "modelmill-tiny" and job["seed"] == 7 and job["metadata"] == {"team": "a"}
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": job["hyperparameters"]}}
    assert job["fine_tuned_model"] is None and job["trained_tokens"] is None and job["error"] is None
    got = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert_matches(got, "FineTuningJob")
    assert got == job


def test_legacy_hyperparameters_and_defaults(client, train_file):
    job = create_job(client, train_file["id"], hyperparameters={"batch_size": 3})
    assert job["method"]["type"] == "supervised" and job["hyperparameters"]["batch_size"] == 3
    assert isinstance(job["seed"], int)  # a seed is chosen when none is given


@pytest.mark.parametrize("body,status,param", [
    ({"model": "gpt-17"}, 400, "model"),
    ({"training_file": "file-nope"}, 400, "training_file"),
    ({"validation_file": "file-nope"}, 400, "validation_file"),
    ({"method": {"type": "reinforcement"}}, 400, "method.reinforcement.grader"),
    ({"method": {"type": "bogus"}}, 400, "method.type"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": -3}}}}, 400,
     "method.supervised.hyperparameters.n_epochs"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 50}}}},
     400, "method.supervised.hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"batch_size": "big"}}, 400, "hyperparameters.batch_size"),
    ({"suffix": "has:colon"}, 400, "suffix"),
    ({"suffix": "x" * 65}, 400, "suffix"),
    ({"seed": -1}, 400, "seed"),
    ({"metadata": {"k": 5}}, 400, "metadata.k"),
    ({"training_file": None}, 400, "training_file"),
])
def test_bad_create_requests_are_400_naming_the_param(client, train_file, body, status, param):
    r = client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": train_file["id"],
                                                  **body})
    assert r.status_code == status, r.text
    assert_matches(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param, r.json()


def test_training_file_must_have_purpose_fine_tune(client):
    other = upload(client, training_jsonl(), purpose="user_data")
    r = client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": other["id"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"


@pytest.mark.parametrize("body,param", [
    ({"test_file": "file-x"}, "test_file"),
    ({"hyperparameters": {"n_epoch": 3}}, "hyperparameters.n_epoch"),
    ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epoch": 3}}}},
     "method.supervised.hyperparameters.n_epoch"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"betta": 0.1}}}}, "method.dpo.hyperparameters.betta"),
    ({"method": {"type": "supervised", "supervised": {}, "extra": 1}}, "method.extra"),
    ({"method": {"type": "reinforcement", "reinforcement": {"grader": {
        "type": "string_check", "name": "x", "input": "{{sample.output_text}}", "reference": "a",
        "operation": "eq", "pass_treshold": 1}}}}, "method.reinforcement.grader.pass_treshold"),
])
def test_unknown_fields_are_refused_as_openai_does(client, train_file, body, param):
    """A misspelled or unknown field is never silently ignored (a job would train without the
    validation file its author meant): OpenAI's 400, `param` the field's dotted path."""
    r = client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": train_file["id"],
                                                  **body})
    assert r.status_code == 400, r.text
    assert r.json() == {"error": {"message": f"Unrecognized request argument supplied: {param}",
                                  "type": "invalid_request_error", "param": param, "code": None}}
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []  # and nothing was made


def test_modelmill_metadata_keys_still_work(client, train_file):
    """Documented extensions live where OpenAI allows free keys (metadata), so they are not unknown fields."""
    job = create_job(client, train_file["id"], metadata={"modelmill.truncation": "allow", "eval": "false"})
    assert job["metadata"]["modelmill.truncation"] == "allow"


def test_list_filters_by_metadata_and_pages(client, train_file):
    a = create_job(client, train_file["id"], metadata={"suite": "x", "n": "1"})
    b = create_job(client, train_file["id"], metadata={"suite": "y"})
    c = create_job(client, train_file["id"])
    body = client.get("/v1/fine_tuning/jobs").json()
    assert_matches(body, "ListPaginatedFineTuningJobsResponse")
    assert [j["id"] for j in body["data"]] == [c["id"], b["id"], a["id"]] and not body["has_more"]
    only_x = client.get("/v1/fine_tuning/jobs", params={"metadata[suite]": "x"}).json()
    assert [j["id"] for j in only_x["data"]] == [a["id"]]
    both = client.get("/v1/fine_tuning/jobs", params={"metadata[suite]": "x", "metadata[n]": "2"}).json()
    assert both["data"] == []
    page = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["data"]] == [c["id"], b["id"]] and page["has_more"]
    rest = client.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": b["id"]}).json()
    assert [j["id"] for j in rest["data"]] == [a["id"]] and not rest["has_more"]


def test_cancel_pause_resume_transitions(client, train_file):
    job = create_job(client, train_file["id"])
    paused = client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").json()
    assert_matches(paused, "FineTuningJob")  # "paused" is the documented extension
    assert paused["status"] == "paused"
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").status_code == 409
    resumed = client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()
    assert resumed["status"] == "queued"
    r = client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume")
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_state"
    assert_matches(r.json(), "ErrorResponse")
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    assert_matches(cancelled, "FineTuningJob")
    assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
    for action in ("cancel", "pause", "resume"):
        r = client.post(f"/v1/fine_tuning/jobs/{job['id']}/{action}")
        assert r.status_code == 409, action
    assert client.post("/v1/fine_tuning/jobs/ftjob-nope/cancel").status_code == 404


def running_job(client, store, settings, file_id: str):
    """A new job that worker "w1" claimed and set running: (its JSON at creation, the job queue, w1's lease)."""
    job = create_job(client, file_id)
    queue = store.job_queue(settings.lease_seconds)
    lease = queue.claim("w1")
    queue.update(lease, status="running")
    return job, queue, lease


def test_cancel_of_a_running_job_is_a_request_to_its_worker(client, store, settings, train_file):
    job, queue, lease = running_job(client, store, settings, train_file["id"])
    r = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    # OpenAI answers the state the request put the job in; the worker stops it within a step.
    assert r["status"] == "cancelled" and r["estimated_finish"] is None
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled"
    assert store.jobs.get(job["id"]).status == "running"  # internally, until the step boundary
    assert queue.requested_action(lease) == "cancel"
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").status_code == 409


def test_pause_of_a_running_job_answers_paused_and_resume_withdraws_it(client, store, settings, train_file):
    job, queue, lease = running_job(client, store, settings, train_file["id"])
    paused = client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause").json()
    assert_matches(paused, "FineTuningJob")
    assert paused["status"] == "paused" and queue.requested_action(lease) == "pause"
    # Resumed before the worker reached its step boundary: the request is withdrawn, training goes on.
    resumed = client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()
    assert resumed["status"] == "running" and queue.requested_action(lease) is None
    # Once the worker has paused it, resume re-queues it as before.
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    queue.finish(lease, "paused", message="Job paused")
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()["status"] == "queued"


def test_resume_that_lands_while_the_worker_is_pausing_requeues_the_job(client, store, settings, train_file):
    # The worker has read the pause request and is writing its checkpoint when the user resumes
    # (the dashboard's Resume is enabled as soon as the API answers "paused"). The resume wins.
    job, queue, lease = running_job(client, store, settings, train_file["id"])
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    assert queue.requested_action(lease) == "pause"  # the worker sees it and stops at the step
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()["status"] == "running"
    queue.finish(lease, "paused", message="Job paused; resume it to continue from this checkpoint")
    assert store.jobs.get(job["id"]).status == "queued"
    events = [e["message"] for e in client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]]
    assert events[0].startswith("Pause withdrawn by resume; queued") and not any(
        m.startswith("Job paused") for m in events)
    assert queue.claim("w2").id == job["id"]  # and a worker picks it up again


@pytest.mark.parametrize("resumed_first", [True, False])
def test_cancel_that_lands_while_the_worker_is_pausing_cancels_the_job(client, store, settings, train_file,
                                                                       resumed_first):
    # The browser test's CI failure: the worker has read the pause request and is finishing its pause
    # (checkpoint, then the paused write) when the user clicks Resume (which withdraws the pending pause)
    # and then Cancel (the lease is still live, so it is a request). The finish must end the job
    # cancelled, not re-queue it as a withdrawn pause: that cleared the cancel and the next worker
    # trained on while the API's answer flipped back from "cancelled" to "queued".
    job, queue, lease = running_job(client, store, settings, train_file["id"])
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/pause")
    assert queue.requested_action(lease) == "pause"  # the worker sees it and stops at the step
    if resumed_first:
        assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/resume").json()["status"] == "running"
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert queue.requested_action(lease) == "cancel"
    queue.finish(lease, "paused", message="Job paused; resume it to continue from this checkpoint")
    done = store.jobs.get(job["id"])
    assert done.status == "cancelled" and done.finished_at is not None and done.requested_action is None
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled"
    events = [e["message"] for e in client.get(f"/v1/fine_tuning/jobs/{job['id']}/events").json()["data"]]
    assert events[0] == "Job cancelled" and not any(m.startswith(("Pause withdrawn by resume; queued", "Job paused"))
                                                    for m in events)
    assert queue.claim("w2") is None  # no worker trains it again


@pytest.mark.parametrize("requested,status", [("cancel", "cancelled"), ("pause", "paused")])
def test_a_request_that_lands_while_a_stopping_worker_hands_the_job_back_is_kept(client, store, settings,
                                                                                 train_file, requested, status):
    # A worker shutting down checkpoints and hands the job back as queued; a cancel or pause the user
    # asked for after its last look at the request is the job's outcome, not dropped with the lease.
    job, queue, lease = running_job(client, store, settings, train_file["id"])
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/{requested}").json()["status"] == status
    queue.finish(lease, "queued", message="Worker stopped; job re-queued to resume from its checkpoint")
    done = store.jobs.get(job["id"])
    assert done.status == status and done.requested_action is None and done.lease_owner is None
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == status
    assert queue.claim("w2") is None


def test_events_newest_first_and_paged(client, store, settings, train_file):
    job = create_job(client, train_file["id"])
    queue = store.job_queue(settings.lease_seconds)
    lease = queue.claim("w1")
    for step in (1, 2, 3):
        queue.record_step(lease, step, 3, f"Step {step}/3", {"step": step, "total_steps": 3, "train_loss": 1.0},
                          None)
    body = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 2}).json()
    assert_matches(body, "ListFineTuningJobEventsResponse")
    assert [e["data"]["step"] for e in body["data"]] == [3, 2] and body["has_more"]
    assert all(e["type"] == "metrics" for e in body["data"])
    rest = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events",
                      params={"after": body["data"][-1]["id"]}).json()
    assert [e["data"].get("step") for e in rest["data"]] == [1, None]
    assert rest["data"][-1]["message"].startswith("Created fine-tuning job")
    assert client.get("/v1/fine_tuning/jobs/ftjob-nope/events").status_code == 404


def test_checkpoints_list(client, store, settings, train_file, tmp_path):
    job = create_job(client, train_file["id"], suffix="s")
    queue = store.job_queue(settings.lease_seconds)
    lease = queue.claim("w1")
    ft_name = store.jobs.get(job["id"]).ft_name
    assert ft_name.startswith("ft:modelmill-tiny:modelmill:s:")
    for step in (2, 4):
        (tmp_path / f"step-{step}").mkdir()
        queue.add_checkpoint(lease, step, tmp_path / f"step-{step}", {"step": step, "train_loss": 0.5,
                                                                       "valid_loss": float("nan")},
                             f"{ft_name}:ckpt-step-{step}")
    body = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert_matches(body, "ListFineTuningJobCheckpointsResponse")
    assert [c["step_number"] for c in body["data"]] == [4, 2]
    assert body["data"][0]["fine_tuned_model_checkpoint"] == f"{ft_name}:ckpt-step-4"
    assert body["data"][0]["metrics"] == {"step": 4, "train_loss": 0.5}  # NaN dropped: JSON has none
    assert body["first_id"] == body["data"][0]["id"] and body["last_id"] == body["data"][1]["id"]
    empty = client.get(f"/v1/fine_tuning/jobs/{create_job(client, train_file['id'])['id']}/checkpoints").json()
    assert_matches(empty, "ListFineTuningJobCheckpointsResponse")
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_openai_sdk_drives_the_jobs_api(client):
    """The official SDK's own request encoding (multipart upload, metadata[k]=v, cursors) works."""
    from openai import OpenAI

    sdk = OpenAI(base_url="http://testserver/v1", api_key="any", http_client=client, max_retries=0)
    f = sdk.files.create(file=("train.jsonl", training_jsonl()), purpose="fine-tune")
    job = sdk.fine_tuning.jobs.create(model="modelmill-tiny", training_file=f.id, metadata={"suite": "sdk"},
                                      method={"type": "supervised",
                                              "supervised": {"hyperparameters": {"n_epochs": 1}}})
    sdk.fine_tuning.jobs.create(model="modelmill-tiny", training_file=f.id)
    assert [j.id for j in sdk.fine_tuning.jobs.list(metadata={"suite": "sdk"}).data] == [job.id]
    assert len(list(sdk.fine_tuning.jobs.list(limit=1))) == 2  # auto-pagination follows `after`
    assert sdk.fine_tuning.jobs.pause(job.id).status == "paused"
    assert sdk.fine_tuning.jobs.resume(job.id).status == "queued"
    assert sdk.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    messages = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id)]
    assert messages[0] == "Job cancelled" and messages[-1].startswith("Created fine-tuning job")
    assert sdk.fine_tuning.jobs.checkpoints.list(job.id).data == []
    assert sdk.files.content(f.id).read() == training_jsonl()
    assert {"modelmill-tiny", "SmolLM2-135M-Instruct"} <= {m.id for m in sdk.models.list()}
    assert sdk.files.delete(f.id).deleted


def test_job_with_a_validation_file_carries_its_eval_id(client, train_file):
    """OpenAI's cookbook reads job.eval_id for the automatic before/after eval: the eval is made with
    the job, so the create response already names it (an extra field FineTuningJob allows)."""
    valid = upload(client, training_jsonl(4))
    job = create_job(client, train_file["id"], validation_file=valid["id"])
    assert_matches(job, "FineTuningJob")
    ev = client.get(f"/v1/evals/{job['eval_id']}").json()
    assert ev["metadata"] == {"fine_tuning_job_id": job["id"]}
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["eval_id"] == job["eval_id"]
    assert [j.get("eval_id") for j in client.get("/v1/fine_tuning/jobs").json()["data"]] == [job["eval_id"]]
    plain = create_job(client, train_file["id"])  # no validation file, no metadata eval: no eval
    assert "eval_id" not in plain
    named = create_job(client, train_file["id"], metadata={"eval": "true", "eval_id": job["eval_id"]})
    assert named["eval_id"] == job["eval_id"]  # metadata eval_id: the caller's own eval


GRADER = {"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "a", "operation": "eq"}


@pytest.mark.parametrize("key,value,limit", [
    ("eval_samples", 300_000, "64"), ("eval_samples", 10**12, "64"), ("eval_interval", 10**9, "100000"),
    ("n_epochs", 51, "50"), ("batch_size", 10_000, "256"), ("compute_multiplier", 1e6, "10"),
])
def test_size_like_rft_hyperparameters_are_bounded(client, train_file, key, value, limit):
    """Issue 17.5: an RFT job asking for an unbounded evaluation is a 400 naming the limit."""
    r = client.post("/v1/fine_tuning/jobs", json={
        "model": "modelmill-tiny", "training_file": train_file["id"],
        "method": {"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {key: value}}}})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == f"method.reinforcement.hyperparameters.{key}"
    assert limit in err["message"], err["message"]
