"""Inference backends behind one setting (ARCHITECTURE.md, "Backends behind settings").

MODELMILL_INFERENCE_BACKEND picks where chat completions, evals and judges get their tokens:
- "transformers" (default): the model runs in this process (ml/sampling/, ml/batching.py,
  ml/multi_lora.py); CPU or GPU, nothing else to run.
- "vllm": a vLLM OpenAI-compatible server decodes (ml/vllm_backend.py), either one already
  running (MODELMILL_VLLM_URL) or one ModelMill starts as a child process
  (MODELMILL_VLLM_START=1: `vllm serve <home>/models/<default_model> --enable-lora ...`, which
  needs a CUDA GPU and the vllm package).
Both are a Sampler; only the vLLM one is built with a backend. RFT rollouts follow the same
setting: with "vllm" and a CUDA GPU, training uses TRL's colocated vLLM engine
(rollout_backend()).

docs/serving.md is the user-facing page.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from modelmill.settings import Settings

log = logging.getLogger(__name__)

VLLM_START_TIMEOUT_S = 900.0  # loading weights and compiling CUDA graphs can take minutes
# Arguments ModelMill always gives a child `vllm serve`; MODELMILL_VLLM_ARGS come after them, and
# vLLM's parser keeps the last value of a repeated flag, so the user's win.
VLLM_DEFAULT_ARGS = ("--enable-lora", "--max-loras", "8", "--max-lora-rank", "64")


def build_sampler(settings: Settings):
    """The Sampler for settings.inference_backend (check() first: a bad setting raises ValueError)."""
    check(settings)
    return BACKENDS[settings.inference_backend](settings)


def check(settings: Settings) -> None:
    """Start-up check of the inference settings; ValueError naming the variable to fix."""
    name = settings.inference_backend
    if name not in BACKENDS:
        raise ValueError(f"MODELMILL_INFERENCE_BACKEND={name!r} is not a backend; use one of {sorted(BACKENDS)}")
    if name != "vllm" or settings.vllm_url:
        return
    if not settings.vllm_start:
        raise ValueError("MODELMILL_INFERENCE_BACKEND=vllm needs MODELMILL_VLLM_URL (a running vLLM server) "
                         "or MODELMILL_VLLM_START=1 (ModelMill starts one; needs a CUDA GPU)")
    if not _cuda_available():
        raise ValueError("MODELMILL_VLLM_START=1 needs a CUDA GPU and none was found; set MODELMILL_VLLM_URL to a "
                         "vLLM server running elsewhere, or MODELMILL_INFERENCE_BACKEND=transformers")
    if _vllm_command() is None:
        raise ValueError("MODELMILL_VLLM_START=1 needs the vllm package (pip install vllm) in ModelMill's environment")


def rollout_backend(settings: Settings) -> str:
    """The RFT rollout backend (rft.rollouts.rollout_backend_args) for these settings: "vllm" when the
    inference backend is vllm, a CUDA GPU is present and vllm is installed, else "transformers"."""
    if settings.inference_backend == "vllm" and _cuda_available() and importlib.util.find_spec("vllm"):
        return "vllm"
    return "transformers"


# ---------------------------------------------------------------------------------------------
# The registry


def _transformers(settings: Settings):
    from modelmill.ml.sampling import Sampler  # its torch imports take modelmill.ml's lock

    from modelmill.ml.vision import ImagePolicy

    sampler = Sampler(cache_size=settings.model_cache_size)
    sampler.image_policy = ImagePolicy(hosts=settings.image_hosts)  # where chat images may be fetched from
    return sampler


def _vllm(settings: Settings):
    from modelmill.ml.sampling import Sampler
    from modelmill.ml.vllm_backend import VLLMBackend

    if settings.vllm_url:
        return Sampler(cache_size=settings.model_cache_size, backend=VLLMBackend(settings.vllm_url))
    from modelmill.ml import models

    base_dir = models.ensure_base(settings.home, settings.default_model)
    server = VLLMServer.start(base_dir, shlex.split(settings.vllm_args))
    return Sampler(cache_size=settings.model_cache_size, backend=VLLMBackend(server.url, process=server))


BACKENDS: dict[str, Callable[[Settings], object]] = {"transformers": _transformers, "vllm": _vllm}


# ---------------------------------------------------------------------------------------------
# A child `vllm serve`


class VLLMServer:
    """`vllm serve BASE --enable-lora ...` on 127.0.0.1, a child of this process (stopped at exit).

    Runtime LoRA loading is switched on for it (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), since
    ModelMill loads each fine-tuned adapter on first use.
    """

    def __init__(self, process: subprocess.Popen, url: str):
        self.process, self.url = process, url

    @classmethod
    def start(cls, base_dir: Path, extra_args: list[str], timeout_s: float = VLLM_START_TIMEOUT_S) -> "VLLMServer":
        command = _vllm_command()
        if command is None:
            raise ValueError("MODELMILL_VLLM_START=1 needs the vllm package (pip install vllm)")
        port = _free_port()
        argv = [*command, "serve", str(base_dir), "--host", "127.0.0.1", "--port", str(port),
                *VLLM_DEFAULT_ARGS, *extra_args]
        env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
        log.info("starting vLLM: %s", shlex.join(argv))
        server = cls(subprocess.Popen(argv, env=env), f"http://127.0.0.1:{port}")
        atexit.register(server.stop)
        server.wait_ready(timeout_s)
        return server

    def wait_ready(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM exited with code {self.process.returncode} while starting "
                                   "(MODELMILL_VLLM_START=1; see its output above)")
            try:
                if httpx.get(self.url + "/v1/models", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        self.stop()
        raise RuntimeError(f"vLLM did not answer on {self.url} within {timeout_s:.0f} s (MODELMILL_VLLM_START=1)")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _vllm_command() -> list[str] | None:
    """How to run vLLM's CLI: the `vllm` script next to this Python, on PATH, or None if not installed."""
    if importlib.util.find_spec("vllm") is None:
        return None
    beside = Path(sys.executable).parent / "vllm"
    script = str(beside) if beside.is_file() else shutil.which("vllm")
    return [script] if script else [sys.executable, "-m", "vllm.entrypoints.cli.main"]


def _cuda_available() -> bool:
    from modelmill.ml import ml_imports

    with ml_imports():  # may run on a worker thread (rollout_backend)
        import torch

    return torch.cuda.is_available()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
