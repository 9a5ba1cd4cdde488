"""Cancelling a generation (ml/batching.py BatchRequest.cancel): a caller that went away frees the
model within one decoding step, and a cancelled request that is still queued is never decoded."""

from __future__ import annotations

import threading
import time

import pytest

from modelmill.ml import models
from modelmill.ml.batching import GenerationCancelled
from modelmill.ml.sampling import Sampler, SamplingParams
from modelmill.ml.types import ModelRef

LONG = SamplingParams(temperature=0, max_tokens=100_000)  # clamped to the tiny model's context


class CountingLoader:
    """modelmill-tiny whose forward() counts decoding steps and sets `cancel` at step `cancel_at`;
    `gate` (when held) blocks generate() until released, so later requests queue behind it."""

    def __init__(self, cancel: threading.Event | None = None, cancel_at: int = 0, hold: bool = False):
        self.cancel, self.cancel_at = cancel, cancel_at
        self.forwards = 0
        self.generates: list[int] = []  # rows of each generate() call
        self.entered, self.gate = threading.Event(), threading.Event()
        if not hold:
            self.gate.set()

    def __call__(self, base_dir, adapter_dir):
        model, tok = models.load_model(base_dir, adapter_dir)
        inner_forward, inner_generate = model.forward, model.generate

        def forward(*a, **kw):
            self.forwards += 1
            if self.cancel is not None and self.forwards == self.cancel_at:
                self.cancel.set()
            return inner_forward(*a, **kw)

        def generate(**kw):
            self.generates.append(kw["input_ids"].shape[0])
            self.entered.set()
            self.gate.wait()
            return inner_generate(**kw)

        model.forward, model.generate = forward, generate
        return model, tok


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    return ModelRef(tiny_model_dir)


@pytest.mark.parametrize("n", [1, 4])
def test_cancel_ends_every_row_within_one_step(ref, n):
    cancel = threading.Event()
    loader = CountingLoader(cancel, cancel_at=5)
    s = Sampler(loader=loader, batch_window_s=0)
    params = SamplingParams(temperature=1.0, seed=1, n=n, max_tokens=100_000)
    result = s.generate(ref, [{"role": "user", "content": "tell me everything"}], None, params, cancel=cancel)
    # The flag went up during step 5's forward; the monitor ends every row right after that step.
    assert loader.forwards <= 6
    assert len(result.choices) == n
    assert all(c.completion_tokens <= 6 for c in result.choices)


def test_cancelled_stream_ends_within_one_step(ref):
    cancel = threading.Event()
    loader = CountingLoader(cancel, cancel_at=4)
    s = Sampler(loader=loader, batch_window_s=0)
    events = list(s.stream(ref, [{"role": "user", "content": "hi"}], None, LONG, cancel=cancel))
    assert loader.forwards <= 5
    assert events[-1].usage["completion_tokens"] <= 5


def test_cancelled_request_still_queued_is_never_decoded(ref):
    loader = CountingLoader(hold=True)
    s = Sampler(loader=loader, batch_window_s=0)
    first_done = threading.Event()
    short = SamplingParams(temperature=0, max_tokens=3)

    def first():
        s.generate(ref, [{"role": "user", "content": "a"}], None, short)
        first_done.set()

    threading.Thread(target=first, daemon=True).start()
    assert loader.entered.wait(60)
    cancel = threading.Event()
    out: list = []

    def second():
        try:
            out.append(s.generate(ref, [{"role": "user", "content": "b"}], None, LONG, cancel=cancel))
        except GenerationCancelled as e:
            out.append(e)

    t = threading.Thread(target=second, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while s.queued < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    cancel.set()
    loader.gate.set()
    t.join(60)
    assert first_done.wait(60)
    assert isinstance(out[0], GenerationCancelled) and out[0].code == "request_cancelled"
    assert loader.generates == [1]  # only the first request was ever decoded
