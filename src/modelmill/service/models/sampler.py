"""The process's one ml.sampling.Sampler.

Chat completions and graders/run (the API), eval runs and RFT judges (the worker) all sample
through it, so a process loads each model once (one LRU cache of settings.model_cache_size
models) and requests from all of them share batches. With `modelmill serve` and its worker
thread that is one cache for both; a `modelmill worker` process has its own.

It is made on first use: importing torch takes seconds, and a process that never samples never
pays for it. An app made with create_app(sampler=...) (tests) uses that one instead
(api/deps.app_sampler).
"""

from __future__ import annotations

import threading

from modelmill.settings import Settings

_sampler = None
_lock = threading.Lock()


def shared_sampler(settings: Settings):
    """The process-wide Sampler, created on the first call with that call's settings.model_cache_size."""
    global _sampler
    if _sampler is None:
        with _lock:
            if _sampler is None:
                # MODELMILL_INFERENCE_BACKEND: transformers here, or a vLLM server (ml/inference.py).
                from modelmill.ml import inference  # the Sampler's torch imports take modelmill.ml's lock

                _sampler = inference.build_sampler(settings)
    return _sampler
