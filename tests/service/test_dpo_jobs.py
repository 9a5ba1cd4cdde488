"""DPO jobs through the API and the worker, on the real ml code with modelmill-tiny: create
(hyperparameters echoed in method.dpo, checked against OpenAI's schema), train to succeeded
with reward metrics in events, checkpoints and step_metrics.csv, fail bad preference files
with line numbers, and continue an SFT job's adapter."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest

from modelmill.service.worker.loop import Worker
from tests.service.conftest import create_job, preference_jsonl, preference_line, training_jsonl, upload
from tests.service.helpers import job_json, train_bad_file, train_continuing
from tests.spec_check import assert_matches

TINY_HP = {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 2.0}
REWARD_KEYS = ("train_reward_margin", "train_reward_accuracy", "train_chosen_logps", "train_rejected_logps")


def dpo(**hp) -> dict:
    return {"type": "dpo", "dpo": {"hyperparameters": hp}}



def chat(client, model: str) -> dict:
    out = client.post("/v1/chat/completions", json={"model": model, "max_tokens": 3, "temperature": 0,
                                                    "messages": [{"role": "user", "content": "What is 2 plus 2?"}]})
    assert out.status_code == 200, out.text
    assert_matches(out.json(), "CreateChatCompletionResponse")
    return out.json()


def test_create_echoes_dpo_hyperparameters(client):
    f = upload(client, preference_jsonl())
    job = create_job(client, f["id"], method={"type": "dpo"})
    assert_matches(job, "FineTuningJob")
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": {**auto, "beta": "auto"}}}
    assert job["hyperparameters"] == auto  # the legacy field: the keys DPO shares with supervised

    job = create_job(client, f["id"], method=dpo(beta=0.5, n_epochs=2))
    assert job["method"]["dpo"]["hyperparameters"] == {**auto, "n_epochs": 2, "beta": 0.5}
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json() == job


@pytest.mark.parametrize("method,param", [
    (dpo(beta=0), "method.dpo.hyperparameters.beta"),
    (dpo(beta=-0.1), "method.dpo.hyperparameters.beta"),
    (dpo(beta=2.5), "method.dpo.hyperparameters.beta"),
    (dpo(beta="big"), "method.dpo.hyperparameters.beta"),
    (dpo(n_epochs=-3), "method.dpo.hyperparameters.n_epochs"),
    (dpo(batch_size=0), "method.dpo.hyperparameters.batch_size"),
    (dpo(learning_rate_multiplier=50), "method.dpo.hyperparameters.learning_rate_multiplier"),
    (dpo(beta=0.0001), "method.dpo.hyperparameters.beta"),  # under the trainer's lower limit
    ({"type": "reinforcement"}, "method.reinforcement.grader"),  # RFT needs its grader
])
def test_bad_dpo_requests_are_400_naming_the_param(client, method, param):
    f = upload(client, preference_jsonl())
    r = client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": f["id"],
                                                  "method": method})
    assert r.status_code == 400, r.text
    assert_matches(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param, r.json()
    if method["type"] == "reinforcement":
        assert r.json()["error"]["code"] == "missing_required_parameter"


def test_dpo_job_trains_with_reward_metrics_and_serves(client, store, settings):
    train = upload(client, preference_jsonl(12))
    valid = upload(client, preference_jsonl(10), filename="valid.jsonl")
    job = create_job(client, train["id"], validation_file=valid["id"], suffix="pref", seed=1,
                     method=dpo(**TINY_HP, beta=0.2), metadata={"modelmill.dpo_sft_weight": "0.5"})
    assert Worker(settings, store).run_once() == job["id"]

    done = job_json(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["method"] == {"type": "dpo", "dpo": {"hyperparameters": {**TINY_HP, "beta": 0.2}}}
    assert done["hyperparameters"] == TINY_HP
    assert done["fine_tuned_model"].startswith("ft:modelmill-tiny:modelmill:pref:")
    assert done["trained_tokens"] > 0

    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()
    assert_matches(events, "ListFineTuningJobEventsResponse")
    metrics = [e["data"] for e in reversed(events["data"]) if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert any("loss: DPO + 0.5 x the preferred answer's NLL" in e["message"] for e in events["data"])
    assert all("train_loss" in m and all(k in m for k in REWARD_KEYS) for m in metrics), metrics
    assert 0.0 <= metrics[-1]["train_reward_accuracy"] <= 1.0
    assert "full_valid_reward_margin" in metrics[-1] and "full_valid_reward_accuracy" in metrics[-1]

    ckpts = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()
    assert_matches(ckpts, "ListFineTuningJobCheckpointsResponse")
    assert "train_reward_margin" in ckpts["data"][0]["metrics"]

    result_id = done["result_files"][0]
    # OpenAI's result files hold the CSV base64-encoded.
    text = base64.b64decode(client.get(f"/v1/files/{result_id}/content").text).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert rows[0]["train_reward_margin"] and "full_valid_reward_accuracy" in rows[-1]

    assert chat(client, done["fine_tuned_model"])["model"] == done["fine_tuned_model"]


def test_dpo_continues_an_sft_jobs_adapter(client, store, settings):
    sft_file = upload(client, training_jsonl(12))
    sft_job = create_job(client, sft_file["id"], method={"type": "supervised",
                                                         "supervised": {"hyperparameters": TINY_HP}})
    Worker(settings, store).run_once()
    sft_done = job_json(client, sft_job["id"])
    assert sft_done["status"] == "succeeded", sft_done["error"]

    pref = upload(client, preference_jsonl(12))
    done = train_continuing(client, store, settings, pref["id"], sft_done["fine_tuned_model"], dpo(**TINY_HP))
    assert done["method"]["dpo"]["hyperparameters"]["beta"] > 0  # "auto" resolved
    chat(client, done["fine_tuned_model"])


def _with(lines: dict[int, str], n: int = 12) -> bytes:
    out = [preference_line(i) for i in range(n)]
    for i, line in lines.items():
        out[i] = line
    return ("\n".join(out) + "\n").encode()


def _edit(i: int, fn) -> str:
    obj = json.loads(preference_line(i))
    fn(obj)
    return json.dumps(obj)


def test_bad_preference_file_fails_with_line_numbers(client, store, settings):
    bad = upload(client, _with({
        2: _edit(2, lambda o: o.pop("preferred_output")),
        5: _edit(5, lambda o: o["non_preferred_output"][0].update(content=o["preferred_output"][0]["content"])),
        7: _edit(7, lambda o: o["preferred_output"][0].update(content="")),
        9: "{not json",
    }))
    err = train_bad_file(client, store, settings, bad["id"], dpo(**TINY_HP))["error"]
    for line in ("line 3", "line 6", "line 8", "line 10"):
        assert line in err["message"], err["message"]
    assert "preferred_output" in err["message"]


def test_sft_file_in_a_dpo_job_and_bad_validation_file(client, store, settings):
    sft_lines = upload(client, training_jsonl(12))
    job = create_job(client, sft_lines["id"], method=dpo(**TINY_HP))
    Worker(settings, store).run_once()
    err = job_json(client, job["id"])["error"]
    assert err["param"] == "training_file" and "line 1" in err["message"]

    good = upload(client, preference_jsonl(12))
    bad_valid = upload(client, _with({0: "[1, 2]"}, n=3), filename="valid.jsonl")
    job = create_job(client, good["id"], validation_file=bad_valid["id"], method=dpo(**TINY_HP))
    Worker(settings, store).run_once()
    err = job_json(client, job["id"])["error"]
    assert err["param"] == "validation_file" and "line 1" in err["message"]
