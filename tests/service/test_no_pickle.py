"""Uploaded files and adapters never go through pickle: with pickle.load / pickle.loads /
torch.load booby-trapped, an upload, a training run on modelmill-tiny, and chat with the
fine-tuned model and its checkpoint all work, and nothing called them. An adapter directory
holding only pickle weights (.bin) is refused before anything reads it."""

from __future__ import annotations

import pickle
import shutil

import pytest

from modelmill import errors
from modelmill.service.models import adapters
from modelmill.service.worker.loop import Worker
from tests.service.conftest import create_job, training_jsonl, upload


@pytest.fixture
def unpickling(monkeypatch):
    """Every call to an unpickling entry point, recorded; each call also raises."""
    import torch

    calls = []

    def trap(name):
        def refuse(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")
        return refuse

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load"), (torch.serialization, "load")):
        monkeypatch.setattr(module, name, trap(f"{module.__name__}.{name}"))
    return calls


def test_upload_training_and_chat_never_unpickle(client, store, settings, unpickling):
    f = upload(client, training_jsonl(12))
    job = create_job(client, f["id"], seed=1, method={"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 1, "batch_size": 4}}})
    assert Worker(settings, store).run_once() == job["id"]
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    ckpt = client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"][0]["fine_tuned_model_checkpoint"]
    for model in (done["fine_tuned_model"], ckpt):
        r = client.post("/v1/chat/completions", json={"model": model, "max_tokens": 2, "temperature": 0,
                                                      "messages": [{"role": "user", "content": "1 plus 1?"}]})
        assert r.status_code == 200, r.text
    assert unpickling == []
    adapter = settings.jobs_dir / job["id"] / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not [p.name for p in adapter.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]


def test_adapter_dirs_with_only_pickle_weights_are_refused(client, store, settings, tmp_path, unpickling):
    from modelmill.ml import models

    base = models.ensure_base(settings.home, "modelmill-tiny")
    pickled = tmp_path / "pickled-adapter"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text("{}")
    (pickled / "adapter_model.bin").write_bytes(pickle.dumps({"weights": [1.0]}))
    with pytest.raises(errors.InvalidRequestError, match="pickle"):  # the ml layer refuses it on its own
        models.load_model(base, pickled)

    # In the service, a .bin-only directory never reaches the loader, not even one under the jobs dir...
    planted = settings.jobs_dir / "ftjob-planted" / "adapter"
    shutil.copytree(pickled, planted)
    with pytest.raises(adapters.AdapterRefused, match="safetensors only"):
        adapters.verify(store, settings, planted, what="the planted adapter")
    # ...nor a directory the platform wrote whose safetensors weights were swapped for pickle ones.
    written = settings.jobs_dir / "ftjob-written" / "adapter"
    written.mkdir(parents=True)
    (written / "adapter_config.json").write_text("{}")
    (written / "adapter_model.safetensors").write_bytes(b"safetensors weights")
    adapters.record(store, "ftjob-written", written)
    assert adapters.verify(store, settings, written, what="the written adapter") == written.resolve()
    (written / "adapter_model.safetensors").unlink()
    (written / "adapter_model.bin").write_bytes(pickle.dumps({"weights": [1.0]}))
    with pytest.raises(adapters.AdapterRefused, match="safetensors only"):
        adapters.verify(store, settings, written, what="the written adapter")
    assert unpickling == []
