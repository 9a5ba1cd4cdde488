"""Only adapters that the platform wrote are ever loaded or resumed: a fine-tuned model whose
adapter changed on disk, or whose recorded directory is not one the platform wrote, is refused
with a clear error (chat, a job continuing it); a resume skips a checkpoint nobody recorded and
refuses one that changed."""

from __future__ import annotations

import shutil

import pytest

from modelmill.service.models import adapters
from modelmill.service.worker.loop import Worker
from tests.service.conftest import create_job, training_jsonl, upload
from tests.service.helpers import run_worker_until_first_checkpoint

HP = {"n_epochs": 1, "batch_size": 4}


def supervised(**hp) -> dict:
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def chat(client, model: str):
    return client.post("/v1/chat/completions", json={"model": model, "max_tokens": 2, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "hi"}]})


def refused(response, *fragments: str) -> dict:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "adapter_refused" and error["type"] == "server_error"
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    assert "/" not in error["message"], "the message names no server path"
    return error


@pytest.fixture
def trained(client, store, settings):
    f = upload(client, training_jsonl(12))
    job = create_job(client, f["id"], seed=1, method=supervised(**HP))
    assert Worker(settings, store).run_once() == job["id"]
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    return {"job": done, "file": f["id"], "adapter": settings.jobs_dir / job["id"] / "adapter"}


def test_a_changed_or_foreign_adapter_is_refused(client, store, settings, trained, tmp_path):
    model, adapter = trained["job"]["fine_tuned_model"], trained["adapter"]
    assert chat(client, model).status_code == 200
    weights = adapter / "adapter_model.safetensors"
    original = weights.read_bytes()

    flipped = bytearray(original)
    flipped[-1] ^= 0xFF  # same size, one byte changed
    weights.write_bytes(bytes(flipped))
    refused(chat(client, model), f"Refusing to load the adapter of model '{model}'",
            "changed after ModelMill wrote it", "adapter_model.safetensors was modified")
    weights.write_bytes(original)  # the same bytes again: the recorded hashes match
    assert chat(client, model).status_code == 200

    (adapter / "notes.txt").write_text("added later")
    refused(chat(client, model), "notes.txt was added")
    (adapter / "notes.txt").unlink()
    (adapter / "link.json").symlink_to(adapter / "adapter_config.json")
    refused(chat(client, model), "link.json is a symbolic link")
    (adapter / "link.json").unlink()
    assert chat(client, model).status_code == 200

    # The store pointing a model at a directory the platform did not write: outside the jobs dir...
    outside = tmp_path / "foreign-adapter"
    shutil.copytree(adapter, outside)
    store.db.execute("UPDATE jobs SET adapter_dir = ? WHERE id = ?", (str(outside), trained["job"]["id"]))
    refused(chat(client, model), "not in ModelMill's own output directory")
    # ...or inside it (an identical copy, even), but never recorded as written there.
    planted = settings.jobs_dir / "ftjob-planted" / "adapter"
    shutil.copytree(adapter, planted)
    store.db.execute("UPDATE jobs SET adapter_dir = ? WHERE id = ?", (str(planted), trained["job"]["id"]))
    refused(chat(client, model), "ModelMill has no record of writing it")
    # ...or a symlink under the jobs dir leading out of it.
    (settings.jobs_dir / "ftjob-link").symlink_to(tmp_path, target_is_directory=True)
    store.db.execute("UPDATE jobs SET adapter_dir = ? WHERE id = ?",
                     (str(settings.jobs_dir / "ftjob-link" / "foreign-adapter"), trained["job"]["id"]))
    refused(chat(client, model), "not in ModelMill's own output directory")
    store.db.execute("UPDATE jobs SET adapter_dir = ? WHERE id = ?", (str(adapter), trained["job"]["id"]))
    assert chat(client, model).status_code == 200


def test_a_job_continuing_a_changed_adapter_fails_clearly(client, store, settings, trained):
    model, weights = trained["job"]["fine_tuned_model"], trained["adapter"] / "adapter_model.safetensors"
    job = create_job(client, trained["file"], model=model, method=supervised(**HP))
    weights.write_bytes(weights.read_bytes() + b"\0")  # changed after the job was accepted
    Worker(settings, store).run_once()
    failed = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "adapter_refused" and failed["error"]["param"] == "model"
    assert "adapter_model.safetensors was modified" in failed["error"]["message"]
    again = client.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": trained["file"]})
    refused(again, "adapter_model.safetensors was modified")  # and no new job starts from it


def _crashed_job(client, store, settings, monkeypatch) -> str:
    """A 2-epoch job (3 steps each) whose worker died right after its first checkpoint (step 3)."""
    f = upload(client, training_jsonl(12))
    job = create_job(client, f["id"], seed=1, method=supervised(n_epochs=2, batch_size=4))
    run_worker_until_first_checkpoint(settings, store, monkeypatch, worker_id="dead")
    store.db.execute("UPDATE jobs SET lease_expires_at = 0 WHERE id = ?", (job["id"],))  # its lease ran out
    return job["id"]


def test_resume_sets_aside_an_unrecorded_checkpoint_and_refuses_a_changed_one(client, store, settings, monkeypatch):
    job_id = _crashed_job(client, store, settings, monkeypatch)
    checkpoints = settings.jobs_dir / job_id / "checkpoints"
    shutil.copytree(checkpoints / "step-3", checkpoints / "step-5")  # newer than the real one: would be resumed
    assert Worker(settings, store).run_once() == job_id
    done = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert done["status"] == "succeeded", done["error"]
    steps = [e.data["step"] for e in store.events.all_for(job_id, type="metrics")]
    assert steps == list(range(1, 7))  # resumed from the recorded step 3, not the planted step 5
    warns = [e.message for e in store.events.all_for(job_id) if e.level == "warn"]
    assert any("Checkpoint step-5 was not recorded by ModelMill" in m for m in warns), warns
    assert list(checkpoints.glob(".refused-step-5-*"))

    job_id = _crashed_job(client, store, settings, monkeypatch)
    state = settings.jobs_dir / job_id / "checkpoints" / "step-3" / "trainer_state.json"
    state.write_text(state.read_text().replace('"global_step": 3', '"global_step": 30'))
    Worker(settings, store).run_once()
    failed = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "adapter_refused"
    assert "checkpoint step-3" in failed["error"]["message"]
    assert "trainer_state.json was modified" in failed["error"]["message"]


def test_verify_refuses_what_the_store_does_not_know(store, settings, tmp_path):
    missing = settings.jobs_dir / "ftjob-gone" / "adapter"
    with pytest.raises(adapters.AdapterRefused, match="does not exist"):
        adapters.verify(store, settings, missing, what="x")
    with pytest.raises(adapters.AdapterRefused, match="not in ModelMill's own output directory"):
        adapters.verify(store, settings, settings.jobs_dir, what="x")  # the jobs dir itself is no adapter
