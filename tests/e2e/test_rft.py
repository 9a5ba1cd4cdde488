"""Reinforcement fine-tuning through the official openai SDK against a live server (modelmill-tiny):
string_check (without a validation file: part of training held out), python and multi graders end to
end, a grader that fails on every sample, cancel and pause mid-run, and request errors that name their field."""

from __future__ import annotations

import base64
import json

import openai
import pytest

from tests.e2e.conftest import wait_for, wait_stopped
from tests.e2e.test_control import wait_running_with_metrics
from tests.spec_check import assert_matches
from tools.datasets import STRING_CHECK, arithmetic_dataset

# Small budgets: "low" reasoning effort and the smallest group keep a tiny-model step well under a second.
HP = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0, "reasoning_effort": "low",
      "compute_multiplier": 0.25, "eval_interval": 2, "eval_samples": 1}

# A reward that varies with the sample, so a random tiny model gets a spread of rewards. It reads the
# prompt from item["messages"] as OpenAI's RFT cookbook graders do (the item is the whole line).
PYTHON = {"type": "python", "name": "length", "source":
          "def grade(sample, item):\n    assert item['messages'][-1]['role'] == 'user'\n"
          "    return min(len(sample['output_text']), 20) / 20\n"}
MULTI = {"type": "multi", "name": "both", "graders": {"exact": STRING_CHECK, "length": PYTHON},
         "calculate_output": "0.5 * exact + 0.5 * length"}
RAISES = {"type": "python", "name": "broken", "source":
          "def grade(sample, item):\n    raise ValueError('the grader is broken')\n"}


@pytest.fixture(scope="module")
def rft_files(client):
    train = client.files.create(file=("rft_train.jsonl", arithmetic_dataset(16)), purpose="fine-tune")
    valid = client.files.create(file=("rft_valid.jsonl", arithmetic_dataset(4, seed=1)), purpose="fine-tune")
    return train.id, valid.id


@pytest.fixture(scope="module")
def rft_small_train(client):
    """10 prompts (the least a training file may have): 2 steps of HP's batch 4, an evaluation (and
    checkpoint) at step 2, for the jobs whose checks need one evaluated checkpoint, not many steps."""
    return client.files.create(file=("rft_small.jsonl", arithmetic_dataset(10, seed=2)), purpose="fine-tune").id


def rft_job(client, train: str, grader: dict, hp: dict | None = None, **kw):
    return client.fine_tuning.jobs.create(
        training_file=train, model="modelmill-tiny", seed=5,
        method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": hp or HP}}, **kw)


def events_of(client, job_id: str) -> list:
    return list(reversed(client.fine_tuning.jobs.list_events(job_id, limit=1000).data))  # oldest first


# The string_check job has no validation file: the same job shows that RFT then holds out part of the
# training prompts and still reports valid_reward_mean (one job fewer in make test than a test of its own).
@pytest.mark.parametrize("grader,with_validation", [(STRING_CHECK, False), (PYTHON, True), (MULTI, True)],
                         ids=["string_check_held_out", "python", "multi"])
def test_rft_job_end_to_end(client, rft_files, rft_small_train, grader, with_validation):
    # 10 prompts: 2 steps of 4 with the validation file; without it 1 prompt is held out, leaving 9 (2 steps).
    valid = {"validation_file": rft_files[1]} if with_validation else {}
    # One job sets its rollouts' temperature through metadata; the others get "auto" (0.7).
    temperature = "0.9" if grader is PYTHON else None
    meta = {"metadata": {"modelmill.rft_temperature": temperature}} if temperature else {}
    created = rft_job(client, rft_small_train, grader, suffix="rft", **valid, **meta)
    assert created.method.type == "reinforcement"
    job = wait_for(client, created.id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert job.status == "succeeded", job.error

    body = client.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
    assert_matches(body, "FineTuningJob")
    rft = body["method"]["reinforcement"]
    assert body["method"]["type"] == "reinforcement" and rft["grader"]["name"] == grader["name"]
    assert rft["hyperparameters"]["reasoning_effort"] in ("low", "medium", "high")

    events = events_of(client, job.id)
    held_out = any("held out" in e.message.lower() for e in events)
    assert held_out == (not with_validation), [e.message for e in events]
    [plan] = [e.message for e in events if e.message.startswith("Training on")]
    assert f"temperature {temperature or '0.7'}," in plan, plan
    base = [e for e in events if "base_reward" in (e.data or {})]
    assert len(base) == 1 and 0.0 <= base[0].data["base_reward"] <= 1.0 and base[0].data["samples"] > 0
    metrics = [e.data for e in events if e.type == "metrics"]
    assert metrics, "no metrics events"
    for m in metrics:
        assert 0.0 <= m["train_reward_mean"] <= 1.0 and m["train_reward_std"] >= 0.0
        assert m["completion_tokens_mean"] > 0 and m["train_grader_error_rate"] == 0.0 and "kl" in m
    assert any("valid_reward_mean" in m for m in metrics)
    best = [e for e in events if "best_checkpoint_step" in (e.data or {})]
    assert best, "the job never said which checkpoint was best"

    ckpts = client.fine_tuning.jobs.checkpoints.with_raw_response.list(job.id).http_response.json()
    assert_matches(ckpts, "ListFineTuningJobCheckpointsResponse")
    assert ckpts["data"] and all("valid_reward_mean" in c["metrics"] for c in ckpts["data"])
    assert best[-1].data["best_checkpoint_step"] in {c["step_number"] for c in ckpts["data"]} | {m["step"] for m in
                                                                                                   metrics}

    # As on OpenAI (and as the cookbook reads it): the result file is base64-encoded CSV.
    results = base64.b64decode(client.files.content(job.result_files[0]).text).decode().splitlines()
    assert "train_reward_mean" in results[0].split(",")
    reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "What is 2 + 2?"}])
    assert reply.model == job.fine_tuned_model


def test_grader_failing_on_every_sample_fails_the_job(client, rft_files):
    job = wait_for(client, rft_job(client, rft_files[0], RAISES, validation_file=rft_files[1]).id,
                   {"succeeded", "failed"}, timeout=240)
    assert job.status == "failed"
    assert job.error.code == "grader_error"
    assert "the grader is broken" in job.error.message and "What is" in job.error.message, job.error.message
    assert job.fine_tuned_model is None


def test_cancel_mid_rft(client, rft_files):
    job = rft_job(client, rft_files[0], STRING_CHECK, {**HP, "n_epochs": 30, "batch_size": 2},
                  validation_file=rft_files[1])
    wait_running_with_metrics(client, job.id)
    client.fine_tuning.jobs.cancel(job.id)
    job = wait_for(client, job.id, {"cancelled", "succeeded", "failed"}, timeout=60)
    assert job.status == "cancelled" and job.fine_tuned_model is None


# make test pauses a 1-epoch job of 8 steps: the pause lands a step or two after the first metrics event
# (should_stop reads the request from the store at each step) and the rest of the epoch runs after the
# resume. The 3-epoch run (resumed across epoch ends; about 3 times as long) is marked slow: `make reliability`.
@pytest.mark.parametrize("n_epochs", [1, pytest.param(3, marks=pytest.mark.slow)], ids=["1_epoch", "3_epochs"])
def test_pause_and_resume_mid_rft(client, rft_files, n_epochs):
    job = rft_job(client, rft_files[0], PYTHON, {**HP, "n_epochs": n_epochs, "batch_size": 2},
                  validation_file=rft_files[1])
    wait_running_with_metrics(client, job.id)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_stopped(client, job.id, timeout=60)
    paused = client.fine_tuning.jobs.retrieve(job.id)
    assert paused.status == "paused", paused.error
    before = max(e.data["step"] for e in events_of(client, job.id) if e.type == "metrics")
    client.fine_tuning.jobs.resume(job.id)
    done = wait_for(client, job.id, {"succeeded", "failed"}, timeout=240)
    assert done.status == "succeeded", done.error
    steps = [e.data["step"] for e in events_of(client, job.id) if e.type == "metrics"]
    assert max(steps) > before and len(steps) == len(set(steps)), steps


@pytest.mark.parametrize("method,param", [
    ({"type": "reinforcement", "reinforcement": {"hyperparameters": HP}}, "method.reinforcement.grader"),
    ({"type": "reinforcement"}, "method.reinforcement.grader"),
    ({"type": "reinforcement", "reinforcement": {"grader": {**STRING_CHECK, "operation": "regex"}}},
     "method.reinforcement.grader.operation"),
    ({"type": "reinforcement", "reinforcement": {"grader": {
        "type": "label_model", "name": "l", "model": "modelmill-tiny", "input": [{"role": "user", "content": "x"}],
        "labels": ["a", "b"], "passing_labels": ["a"]}}}, "method.reinforcement.grader.type"),
    ({"type": "reinforcement", "reinforcement": {"grader": STRING_CHECK,
                                                 "hyperparameters": {"compute_multiplier": 50}}},
     "method.reinforcement.hyperparameters.compute_multiplier"),
    ({"type": "reinforcement", "reinforcement": {"grader": STRING_CHECK,
                                                 "hyperparameters": {"reasoning_effort": "extreme"}}},
     "method.reinforcement.hyperparameters.reasoning_effort"),
], ids=["no_grader", "no_section", "bad_operation", "top_level_label_model", "compute_multiplier", "effort"])
def test_bad_rft_requests_are_400_naming_the_field(client, rft_files, method, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(training_file=rft_files[0], model="modelmill-tiny", method=method)
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body


def test_malformed_rft_file_fails_with_line_number(client):
    lines = arithmetic_dataset(12).decode().splitlines()
    bad = json.loads(lines[4])
    bad["messages"].append({"role": "assistant", "content": "9"})  # the last message must be the user's
    lines[4] = json.dumps(bad)
    lines[7] = json.dumps({"messages": [{"role": "user", "content": "hi"}], "tools": "not a list"})
    f = client.files.create(file=("bad_rft.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
    job = wait_for(client, rft_job(client, f.id, STRING_CHECK).id, {"failed", "succeeded"}, timeout=60)
    assert job.status == "failed" and job.error.param == "training_file"
    assert "line 5" in job.error.message and "line 8" in job.error.message, job.error.message
