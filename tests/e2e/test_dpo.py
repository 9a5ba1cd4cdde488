"""DPO through the official openai SDK against a live server: a preference job with reward
metrics, DPO on top of an SFT job's fine-tuned model, and malformed preference files each
failing their job with a line number."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import wait_for
from tools.datasets import short_preference_dataset
from tests.spec_check import assert_matches

HP = {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 2.0, "beta": 0.1}


@pytest.fixture(scope="module")
def pref_file(client):
    return client.files.create(file=("pref.jsonl", short_preference_dataset(24)), purpose="fine-tune")


def dpo_job(client, training_file: str, model: str = "modelmill-tiny", **kw):
    return client.fine_tuning.jobs.create(training_file=training_file, model=model, seed=3,
                                          method={"type": "dpo", "dpo": {"hyperparameters": HP}}, **kw)


def job_body(client, job_id: str) -> dict:
    body = client.fine_tuning.jobs.with_raw_response.retrieve(job_id).http_response.json()
    assert_matches(body, "FineTuningJob")
    return body


def test_dpo_job_end_to_end(client, pref_file):
    valid = client.files.create(file=("pref_valid.jsonl", short_preference_dataset(8, seed=1)), purpose="fine-tune")
    created = dpo_job(client, pref_file.id, validation_file=valid.id, suffix="dpo")
    assert created.method.type == "dpo" and created.method.dpo.hyperparameters.beta == 0.1
    job = wait_for(client, created.id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    body = job_body(client, job.id)
    assert body["method"] == {"type": "dpo", "dpo": {"hyperparameters": HP}}

    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert metrics and all("train_reward_margin" in m and "train_reward_accuracy" in m for m in metrics)
    assert "full_valid_reward_accuracy" in metrics[0]  # newest first: the epoch-end step
    ckpts = client.fine_tuning.jobs.checkpoints.with_raw_response.list(job.id).http_response.json()
    assert_matches(ckpts, "ListFineTuningJobCheckpointsResponse")

    reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "turn on the hall lights"}])
    assert reply.model == job.fine_tuned_model and reply.choices[0].message.content is not None


def test_dpo_on_top_of_an_sft_model(client, sft_model, pref_file):
    job = wait_for(client, dpo_job(client, pref_file.id, model=sft_model).id, {"succeeded", "failed", "cancelled"})
    assert job.status == "succeeded", job.error
    assert job.model == sft_model and job.fine_tuned_model.startswith("ft:modelmill-tiny:")
    reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "turn off the attic lights"}])
    assert reply.choices[0].finish_reason in ("stop", "length")


GOOD = short_preference_dataset(12, seed=2).decode().splitlines()


def with_line(i: int, edit) -> bytes:
    lines = list(GOOD)
    if isinstance(edit, str):
        lines[i] = edit
    else:
        obj = json.loads(lines[i])
        edit(obj)
        lines[i] = json.dumps(obj)
    return ("\n".join(lines) + "\n").encode()


def _same_text(o):
    o["non_preferred_output"][0]["content"] = o["preferred_output"][0]["content"]


# (name, file bytes, text the error message must contain)
CASES = [
    ("empty_output", with_line(3, lambda o: o["preferred_output"][0].update(content="")), "line 4"),
    ("same_text", with_line(5, _same_text), "line 6"),
    ("no_preferred_output", with_line(1, lambda o: o.pop("preferred_output")), "line 2"),
    ("non_json", with_line(8, "{this is not json"), "line 9"),
]


@pytest.mark.parametrize("name,data,needle", CASES, ids=[c[0] for c in CASES])
def test_malformed_preference_file_fails_with_line_number(client, name, data, needle):
    f = client.files.create(file=(f"{name}.jsonl", data), purpose="fine-tune")
    job = wait_for(client, dpo_job(client, f.id).id, {"failed", "succeeded"}, timeout=60)
    assert job.status == "failed"
    body = job_body(client, job.id)
    assert body["error"]["param"] == "training_file" and body["error"]["code"]
    assert needle in body["error"]["message"], body["error"]["message"]


def test_bad_beta_is_400(client, pref_file):
    import openai

    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(training_file=pref_file.id, model="modelmill-tiny",
                                       method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}})
    assert e.value.body["param"] == "method.dpo.hyperparameters.beta"
