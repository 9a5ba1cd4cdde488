"""The inference backend registry (ml/inference.py) and the RFT rollout backend switch."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from modelmill.errors import InvalidRequestError
from modelmill.ml import inference
from modelmill.ml.rft import rollouts
from modelmill.settings import Settings


def test_transformers_is_the_default_and_builds_a_local_sampler(tmp_path):
    settings = Settings(home=tmp_path)
    assert settings.inference_backend == "transformers"
    sampler = inference.build_sampler(settings)
    assert sampler.backend is None and sampler.cache_size == settings.model_cache_size


def test_vllm_with_a_url_builds_a_client_sampler(tmp_path):
    from modelmill.ml.vllm_backend import VLLMBackend

    sampler = inference.build_sampler(Settings(home=tmp_path, inference_backend="vllm",
                                               vllm_url="http://127.0.0.1:9/v1"))
    assert isinstance(sampler.backend, VLLMBackend) and sampler.backend.base_url == "http://127.0.0.1:9"


def test_settings_read_the_backend_variables(monkeypatch):
    monkeypatch.setenv("MODELMILL_INFERENCE_BACKEND", "vllm")
    monkeypatch.setenv("MODELMILL_VLLM_URL", "http://gpu-box:8000")
    monkeypatch.setenv("MODELMILL_VLLM_START", "1")
    monkeypatch.setenv("MODELMILL_VLLM_ARGS", "--max-loras 16")
    s = Settings.from_env()
    assert (s.inference_backend, s.vllm_url, s.vllm_start, s.vllm_args) == ("vllm", "http://gpu-box:8000", True,
                                                                            "--max-loras 16")


@pytest.mark.parametrize("changes,variable", [
    ({"inference_backend": "tgi"}, "MODELMILL_INFERENCE_BACKEND"),
    ({"inference_backend": "vllm"}, "MODELMILL_VLLM_URL"),
])
def test_bad_backend_settings_fail_at_start_up_naming_the_variable(tmp_path, changes, variable):
    with pytest.raises(ValueError, match=variable):
        inference.check(Settings(home=tmp_path, **changes))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU start-up error")
def test_starting_vllm_without_a_gpu_is_a_clear_start_up_error(tmp_path):
    with pytest.raises(ValueError, match="MODELMILL_VLLM_START=1 needs a CUDA GPU"):
        inference.build_sampler(Settings(home=tmp_path, inference_backend="vllm", vllm_start=True))


def test_rollouts_use_vllm_only_with_the_vllm_backend_and_a_gpu(tmp_path, monkeypatch):
    assert inference.rollout_backend(Settings(home=tmp_path)) == "transformers"
    vllm_settings = Settings(home=tmp_path, inference_backend="vllm", vllm_url="http://x")
    monkeypatch.setattr(inference, "_cuda_available", lambda: False)
    assert inference.rollout_backend(vllm_settings) == "transformers"
    monkeypatch.setattr(inference, "_cuda_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else None)
    assert inference.rollout_backend(vllm_settings) == "vllm"


def test_rollout_backend_args_build_a_valid_grpo_config(tmp_path, monkeypatch):
    from trl import GRPOConfig

    common = dict(output_dir=str(tmp_path), bf16=False, fp16=False, use_cpu=True, report_to=[])
    config = GRPOConfig(**common, **rollouts.rollout_backend_args("transformers"))
    assert config.use_vllm is False
    with pytest.raises(InvalidRequestError) as ei:
        rollouts.rollout_backend_args("sglang")
    assert ei.value.param == "rollout_backend"
    if not torch.cuda.is_available():
        with pytest.raises(InvalidRequestError, match="CUDA GPU"):
            rollouts.rollout_backend_args("vllm")
    # What a GPU box with vllm installed gets, checked against the installed TRL's GRPOConfig.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real_find_spec(name, *a))
    args = rollouts.rollout_backend_args("vllm")
    config = GRPOConfig(**common, **args)
    assert config.use_vllm is True and config.vllm_mode == "colocate"
    assert 0 < config.vllm_gpu_memory_utilization <= 0.5


def test_serve_refuses_to_start_with_a_bad_backend_setting(tmp_path, monkeypatch, capsys):
    from modelmill import cli

    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path))
    monkeypatch.setenv("MODELMILL_INFERENCE_BACKEND", "vllm")
    monkeypatch.delenv("MODELMILL_VLLM_URL", raising=False)
    monkeypatch.delenv("MODELMILL_VLLM_START", raising=False)
    assert cli.main(["serve", "--port", "0"]) == 2
    assert "MODELMILL_VLLM_URL" in capsys.readouterr().err
