"""Sequence limits, precision and quantisation through a job's metadata, with modelmill-tiny on CPU:
a ~4,000-token example trains whole; one over the limit fails the job before training, naming its
line and token count; truncation is an explicit opt-in; the plan is one job event."""

from __future__ import annotations

import json

import pytest

from modelmill.ml import models, sft
from modelmill.service.worker.loop import Worker
from tests.service.conftest import chat_line, create_job, upload

ONE_STEP_EACH = {"type": "supervised", "supervised": {"hyperparameters": {
    "n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0}}}


def long_line(words: int) -> str:
    return json.dumps({"messages": [{"role": "user", "content": "Say many words."},
                                    {"role": "assistant", "content": "word " * words}]})


def jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def token_counts(settings, content: bytes, tmp_path) -> list[int]:
    """Each line's tokens, counted the way training counts them."""
    path = tmp_path / "counted.jsonl"
    path.write_bytes(content)
    base = models.ensure_base(settings.home, "modelmill-tiny")
    config = sft.SFTConfig(base_dir=base, train_path=path, valid_path=None, output_dir=tmp_path, n_epochs=1,
                           batch_size=1, learning_rate_multiplier=1.0)
    return [x.tokens for x in sft.example_lengths(path, models.load_tokenizer(base), config)]


def events(store, job_id: str) -> list:
    return list(store.events.all_for(job_id))


def test_a_4000_token_example_trains_whole_on_cpu(client, store, settings, tmp_path):
    content = jsonl([chat_line(i) for i in range(10)] + [long_line(3990)])
    counts = token_counts(settings, content, tmp_path)
    assert 3900 < counts[-1] < 4200
    job = create_job(client, upload(client, content)["id"], method=ONE_STEP_EACH)
    Worker(settings, store).run_once()
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["trained_tokens"] == sum(counts)  # every token of every example: nothing was cut
    found = events(store, job["id"])
    plan = [e for e in found if e.message.startswith("Precision:")]
    assert len(plan) == 1 and plan[0].data["max_seq_len"] == 8192 and plan[0].data["dtype"] == "float32"
    assert plan[0].message.startswith("Precision: fp32 (CPU); quantisation: none (")
    assert plan[0].data["gradient_checkpointing"] is False
    assert not [e for e in found if e.level == "warn"]


def test_an_example_over_the_limit_fails_the_job_before_training(client, store, settings, tmp_path):
    content = jsonl([chat_line(i) for i in range(4)] + [long_line(400)] + [chat_line(i) for i in range(6)]
                    + [long_line(300)])
    counts = token_counts(settings, content, tmp_path)
    job = create_job(client, upload(client, content)["id"], method=ONE_STEP_EACH,
                     metadata={"modelmill.max_seq_len": "256"})
    Worker(settings, store).run_once()
    failed = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert failed["status"] == "failed"
    err = failed["error"]
    assert err["code"] == "invalid_training_file" and err["param"] == "training_file"
    assert f"line 5: {counts[4]} tokens, over the limit of 256" in err["message"]
    assert f"line 12: {counts[11]} tokens" in err["message"]
    found = events(store, job["id"])
    assert [e.message for e in found if e.level == "error" and e.message.startswith("line ")] == [
        f"line 5: {counts[4]} tokens, over the limit of 256", f"line 12: {counts[11]} tokens, over the limit of 256"]
    assert not any(e.message == "Fine-tuning job started" for e in found)
    assert not any(e.message.startswith("Files validated") for e in found)


def test_an_example_longer_than_the_model_context_fails_without_any_setting(client, store, settings):
    job = create_job(client, upload(client, jsonl([chat_line(i) for i in range(10)] + [long_line(8300)]))["id"],
                     method=ONE_STEP_EACH)
    Worker(settings, store).run_once()
    err = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["error"]
    assert err["code"] == "invalid_training_file" and "line 11: " in err["message"]
    assert "over the limit of 8192" in err["message"] and "model context 8192" in err["message"]


def test_truncation_is_opt_in_and_warns(client, store, settings, tmp_path):
    content = jsonl([chat_line(i) for i in range(10)] + [long_line(400)])
    job = create_job(client, upload(client, content)["id"], method=ONE_STEP_EACH,
                     metadata={"modelmill.max_seq_len": "256", "modelmill.truncation": "allow"})
    Worker(settings, store).run_once()
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    counts = token_counts(settings, content, tmp_path)
    assert done["trained_tokens"] == sum(counts[:-1]) + 256
    warns = [e for e in events(store, job["id"]) if e.level == "warn"]
    assert len(warns) == 1 and warns[0].data["truncated_examples"] == 1 and warns[0].data["max_seq_len"] == 256
    plan = [e for e in events(store, job["id"]) if e.message.startswith("Precision:")][0]
    assert plan.data["max_seq_len"] == 256 and plan.data["max_seq_len_why"].startswith("requested")


def test_nf4_on_a_cpu_worker_fails_the_job_clearly(client, store, settings):
    job = create_job(client, upload(client, jsonl([chat_line(i) for i in range(10)]))["id"], method=ONE_STEP_EACH,
                     metadata={"modelmill.quantization": "nf4"})
    Worker(settings, store).run_once()
    failed = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "quantization_unsupported" and failed["error"]["param"] == "metadata"
    assert "modelmill.quantization" in failed["error"]["message"] and "CUDA" in failed["error"]["message"]


@pytest.mark.parametrize("metadata,needle", [
    ({"modelmill.max_seq_len": "lots"}, "modelmill.max_seq_len"),
    ({"modelmill.max_seq_len": "0"}, "modelmill.max_seq_len"),
    ({"modelmill.max_seq_len": "9000"}, "longer than the context of modelmill-tiny (8192 tokens)"),
    ({"modelmill.truncation": "yes"}, "modelmill.truncation"),
    ({"modelmill.quantization": "int3"}, "modelmill.quantization"),
    ({"modelmill.max_seq_length": "512"}, "unknown metadata key 'modelmill.max_seq_length'"),
    ({"modelmill.early_stopping": "soon"}, "modelmill.early_stopping"),
    ({"modelmill.early_stopping": "0"}, "modelmill.early_stopping"),
    ({"modelmill.final_model": "first"}, "modelmill.final_model"),
    ({"modelmill.final_model": "best"}, "'modelmill.final_model' needs a validation_file"),
    ({"modelmill.early_stopping": "2"}, "'modelmill.early_stopping' needs a validation_file"),
    ({"modelmill.dpo_sft_weight": "lots"}, "'modelmill.dpo_sft_weight' must be 'auto' or a number"),
    ({"modelmill.dpo_sft_weight": "nan"}, "'modelmill.dpo_sft_weight' must be 'auto' or a number"),
    ({"modelmill.dpo_sft_weight": "11"}, "'modelmill.dpo_sft_weight' must be 'auto' or a number"),
    ({"modelmill.dpo_sft_weight": "1"}, "'modelmill.dpo_sft_weight' is for dpo jobs only"),
    ({"modelmill.rft_temperature": "warm"}, "'modelmill.rft_temperature' must be 'auto' or a number greater than 0"),
    ({"modelmill.rft_temperature": "0"}, "'modelmill.rft_temperature' must be 'auto' or a number greater than 0"),
    ({"modelmill.rft_temperature": "2.5"}, "'modelmill.rft_temperature' must be 'auto' or a number greater than 0"),
    ({"modelmill.rft_temperature": "inf"}, "'modelmill.rft_temperature' must be 'auto' or a number greater than 0"),
    ({"modelmill.rft_temperature": "0.7"}, "'modelmill.rft_temperature' is for reinforcement jobs only"),
])
def test_bad_training_metadata_is_a_400_naming_metadata(client, settings, metadata, needle):
    models.ensure_base(settings.home, "modelmill-tiny")  # so its context can be checked at creation
    f = upload(client, jsonl([chat_line(i) for i in range(10)]))
    r = client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": f["id"],
                                                  "metadata": {"team": "a", **metadata}})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "metadata" and needle in err["message"]


def test_the_server_quantization_setting_applies_and_is_named(client, store, settings, monkeypatch):
    job = create_job(client, upload(client, jsonl([chat_line(i) for i in range(10)]))["id"], method=ONE_STEP_EACH)
    Worker(settings.with_(quantization="nf4"), store).run_once()
    err = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["error"]
    assert err["code"] == "quantization_unsupported" and err["param"] is None
    assert "MODELMILL_QUANTIZATION=nf4" in err["message"]
    monkeypatch.setenv("MODELMILL_QUANTIZATION", "NF4")
    assert type(settings).from_env().quantization == "nf4"
    monkeypatch.setenv("MODELMILL_QUANTIZATION", "int3")
    with pytest.raises(ValueError, match="MODELMILL_QUANTIZATION"):
        type(settings).from_env()
