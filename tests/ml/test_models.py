"""Base-model registry: built-ins, the one-time builds (atomic, race-safe), user-added models."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from modelmill.errors import ConflictError, InvalidRequestError, NotFoundError
from modelmill.ml import chat_format, models


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path))
    return tmp_path


def test_tiny_build_is_deterministic_and_carries_our_template(tmp_path):
    dirs = [models.ensure_base(tmp_path / f"home{i}", "modelmill-tiny") for i in range(2)]
    assert (dirs[0] / "model.safetensors").read_bytes() == (dirs[1] / "model.safetensors").read_bytes()
    config = json.loads((dirs[0] / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    model, tokenizer = models.load_model(dirs[0])
    assert tokenizer.chat_template == chat_format.chat_template()
    assert not model.training
    assert 3_000_000 < sum(p.numel() for p in model.parameters()) < 3_500_000


def test_second_ensure_base_is_instant(home):
    first = models.ensure_base(home, "modelmill-tiny")
    started = time.monotonic()
    assert models.ensure_base(home, "modelmill-tiny") == first == home / "models" / "modelmill-tiny"
    assert time.monotonic() - started < 0.1


def test_racing_builds_run_once_and_leave_no_temp_dirs(home, monkeypatch):
    calls = []

    def slow_build(out: Path, progress) -> None:
        calls.append(out)
        time.sleep(0.3)  # long enough for the other thread to reach the lock
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"x")

    spec = models.BaseModelSpec(info=models.ModelInfo("racer", 0, "test"), build=slow_build)
    monkeypatch.setitem(models.BASE_MODELS, "racer", spec)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(models.ensure_base(home, "racer"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [home / "models" / "racer"] * 2
    assert not list((home / "models").glob(".tmp-*"))


def test_failed_build_leaves_nothing_and_retries(home, monkeypatch):
    def broken(out: Path, progress) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(models.BASE_MODELS, "flaky", models.BaseModelSpec(models.ModelInfo("flaky", 0, "t"), broken))
    with pytest.raises(RuntimeError):
        models.ensure_base(home, "flaky")
    assert not (home / "models" / "flaky").exists() and not list((home / "models").glob(".tmp-*"))


def test_unknown_model_is_not_found(home):
    with pytest.raises(NotFoundError):
        models.ensure_base(home, "no-such-model")
    assert not models.is_base_model(home, "no-such-model")


def test_add_model_from_local_dir(home, tmp_path):
    src = tmp_path / "my-src"
    shutil.copytree(models.ensure_base(home, "modelmill-tiny"), src)
    (src / "chat_template.jinja").write_text("{{ messages }}")  # replaced by ours
    info = models.add_model(home, "my-llama", str(src))
    assert info.name == "my-llama" and info.source == str(src)
    assert models.is_base_model(home, "my-llama")
    assert [m.name for m in models.list_models(home)] == ["SmolLM2-135M-Instruct", "modelmill-tiny",
                                                         "modelmill-tiny-vl", "my-llama"]
    registry = json.loads((home / "models" / "registry.json").read_text())
    assert registry["my-llama"]["source"] == str(src)
    _, tokenizer = models.load_model(models.ensure_base(home, "my-llama"))
    assert tokenizer.chat_template == chat_format.chat_template()
    with pytest.raises(ConflictError):
        models.add_model(home, "my-llama", str(src))
    with pytest.raises(ConflictError):
        models.add_model(home, "modelmill-tiny", str(src))
    shutil.rmtree(home / "models" / "my-llama")  # lost directory: rebuilt from the recorded source
    assert (models.ensure_base(home, "my-llama") / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["../evil", "ft:x", "", "a/b", ".hidden"])
def test_add_model_rejects_bad_names(home, name):
    with pytest.raises(InvalidRequestError):
        models.add_model(home, name, "/nowhere")


def test_add_model_refuses_pickle_weights(home, tmp_path):
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(InvalidRequestError, match="pickle"):
        models.add_model(home, "pickled", str(src))
    assert not models.is_base_model(home, "pickled") and not (home / "models" / "pickled").exists()


def test_add_model_refuses_remote_code(home, tmp_path):
    from safetensors.torch import save_file
    import torch

    src = tmp_path / "custom"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "totally-custom",
                                                 "auto_map": {"AutoConfig": "evil.EvilConfig"}}))
    (src / "evil.py").write_text("raise SystemExit('remote code ran')")
    save_file({"w": torch.zeros(1)}, src / "model.safetensors")
    with pytest.raises(InvalidRequestError, match="remote code"):
        models.add_model(home, "custom", str(src))
    assert not (home / "models" / "custom").exists()


def test_add_model_unreachable_hub_id(home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InvalidRequestError, match="cannot fetch"):
        models.add_model(home, "remote", "someone/some-model")


def test_smollm2_converts_once_then_loads_fast(home):
    """The real base model: GGUF -> safetensors (~25 s here, once), then a ~1 s load."""
    messages: list[str] = []
    model_dir = models.ensure_base(home, "SmolLM2-135M-Instruct", progress=messages.append)
    assert messages and "GGUF" in messages[0]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in model_dir.iterdir()}
    started = time.monotonic()
    model, tokenizer = models.load_model(models.ensure_base(home, "SmolLM2-135M-Instruct"))
    assert time.monotonic() - started < 10
    assert tokenizer.chat_template == chat_format.chat_template()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0][prompt["input_ids"].shape[1]:])


def test_concurrent_loads_in_one_process_all_get_real_weights(tiny_model_dir):
    """transformers' from_pretrained is not thread-safe (a tied lm_head could stay on the meta
    device); load_model serialises loads, so threads loading at once each get a whole model."""
    from concurrent.futures import ThreadPoolExecutor

    def load(_):
        model, _tok = models.load_model(tiny_model_dir)
        return [name for name, p in model.named_parameters() if p.is_meta]

    for _ in range(3):
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(load, range(4))) == [[]] * 4


def test_smollm2_tokenizer_shared_through_the_cache_is_the_gguf_one(tmp_path, monkeypatch):
    """MODELMILL_CACHE_DIR (the suite sets one): the first process converts the GGUF's tokenizer and
    saves it there; the next loads that copy, which must save the same bytes as the converted one."""
    from transformers import AutoTokenizer

    monkeypatch.setenv("MODELMILL_CACHE_DIR", str(tmp_path / "cache"))
    models._smollm2_tokenizer.cache_clear()
    try:
        converted = models._smollm2_tokenizer()
        (saved,) = (tmp_path / "cache" / "smollm2-tokenizer").iterdir()
        assert (saved / "tokenizer.json").is_file() and not list(saved.parent.glob(".tmp-*"))
        models._smollm2_tokenizer.cache_clear()
        monkeypatch.setattr(AutoTokenizer, "from_pretrained", _refusing_gguf(AutoTokenizer.from_pretrained))
        cached = models._smollm2_tokenizer()
    finally:
        models._smollm2_tokenizer.cache_clear()
    assert cached is not converted and cached.get_vocab() == converted.get_vocab()
    text = "<|im_start|>user\nKitchen wörld 12345\t<|im_end|>"
    assert cached(text)["input_ids"] == converted(text)["input_ids"]
    for tok, out in ((converted, tmp_path / "a"), (cached, tmp_path / "b")):
        tok.save_pretrained(out)
    assert {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()} == \
        {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}


def _refusing_gguf(from_pretrained):
    def load(*args, **kwargs):
        assert "gguf_file" not in kwargs, "read the GGUF again instead of the cached tokenizer"
        return from_pretrained(*args, **kwargs)
    return load
