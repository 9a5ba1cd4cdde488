"""Batching of concurrent Sampler requests (ml/batching.py) on modelmill-tiny.

The model's generate() is wrapped to count calls and rows, and a gate holds the first call
until the other requests are queued behind it, so "arrived while the model was busy" is
deterministic rather than a race."""

from __future__ import annotations

import threading
import time

import pytest

from modelmill.errors import InvalidRequestError
from modelmill.ml import models
from modelmill.ml.sampling import Sampler, SamplingParams
from modelmill.ml.types import ModelRef
from tests.ml.lora_adapters import random_lora_adapter

PROMPTS = [[{"role": "user", "content": text}] for text in (
    "hi", "Turn on the kitchen lights please", "What is two plus two?",
    "a much longer prompt, so that this row needs plenty of left padding in a batch with short ones",
    "Tell me a story", "x", "Set the thermostat in the office to 21 degrees", "bye")]
TOOLS = [{"type": "function", "function": {"name": "set_light", "parameters": {
    "type": "object", "properties": {"room": {"type": "string"}}}}}]
GREEDY = SamplingParams(temperature=0, max_tokens=10)


class GatedLoader:
    """Loads modelmill-tiny; its generate() records the rows of every call and, while `hold` is
    set, blocks the first call until release() (so later requests queue up behind it)."""

    def __init__(self, hold: bool = False, fail_on_token: int | None = None, context: int | None = None):
        self.rows: list[int] = []
        self.entered, self.gate = threading.Event(), threading.Event()
        if not hold:
            self.gate.set()
        self.fail_on_token, self.context = fail_on_token, context

    def __call__(self, base_dir, adapter_dir):
        model, tok = models.load_model(base_dir, adapter_dir)
        if self.context:
            model.config.max_position_embeddings = self.context
        inner = model.generate

        def generate(**kw):
            self.rows.append(kw["input_ids"].shape[0])
            self.entered.set()
            self.gate.wait()
            if self.fail_on_token is not None and bool((kw["input_ids"] == self.fail_on_token).any()):
                raise RuntimeError("poisoned prompt")
            return inner(**kw)

        model.generate = generate
        return model, tok

    def release(self):
        self.gate.set()


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    return ModelRef(tiny_model_dir)


@pytest.fixture(scope="module")
def alone(ref):
    """Reference outputs: each request decoded on its own (no collection window, one at a time)."""
    s = Sampler(batch_window_s=0)

    def run(messages, params, **kw):
        return s.generate(kw.get("ref", ref), messages, kw.get("tools"), params, kw.get("tool_choice"))
    return run


def run_concurrently(sampler, loader, calls) -> list:
    """Start calls[0]; once it is inside generate(), start the rest and release the gate when
    they are all queued. Returns each call's result or exception, in order."""
    out: list = [None] * len(calls)

    def worker(i):
        try:
            out[i] = calls[i]()
        except Exception as e:  # noqa: BLE001 - returned to the test
            out[i] = e

    first = threading.Thread(target=worker, args=(0,))
    first.start()
    assert loader.entered.wait(60)
    rest = [threading.Thread(target=worker, args=(i,)) for i in range(1, len(calls))]
    for t in rest:
        t.start()
    deadline = time.monotonic() + 60
    while sampler.queued < len(calls) - 1 - sum(isinstance(o, Exception) for o in out):
        assert time.monotonic() < deadline, "requests never queued"
        time.sleep(0.01)
    loader.release()
    for t in [first, *rest]:
        t.join(900)  # generous: a deadlock still fails, a loaded machine does not
    return out


def texts(result) -> list[str]:
    return [c.text for c in result.choices]


def test_requests_arriving_while_busy_share_one_generate(ref, alone):
    loader = GatedLoader(hold=True)
    s = Sampler(loader=loader)
    calls = [lambda m=m: s.generate(ref, m, None, GREEDY) for m in PROMPTS]
    results = run_concurrently(s, loader, calls)
    assert loader.rows == [1, 7]  # the first alone, the 7 that queued behind it in ONE generate()
    assert s.batch_history == [(1, 1), (7, 7)]
    for messages, r in zip(PROMPTS, results):  # left padding and batch-mates change nothing
        want = alone(messages, GREEDY)
        assert texts(r) == texts(want) and r.usage == want.usage
        assert r.choices[0].finish_reason == want.choices[0].finish_reason


def test_collection_window_groups_simultaneous_requests(ref, alone):
    loader = GatedLoader()
    s = Sampler(loader=loader, batch_window_s=2.0)  # generous: the machine running tests is shared
    s.load(ref)
    barrier = threading.Barrier(4)
    out: dict[int, object] = {}

    def call(i):
        barrier.wait()
        out[i] = s.generate(ref, PROMPTS[i], None, GREEDY)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)  # generous: a deadlock still fails, a loaded machine does not
    assert loader.rows == [4] and s.batch_history == [(4, 4)]
    assert [texts(out[i]) for i in range(4)] == [texts(alone(PROMPTS[i], GREEDY)) for i in range(4)]


def test_mixed_parameters_in_one_batch_match_alone(ref, alone):
    """Per-request budgets, stop strings, n, seeds, temperatures and tool-choice prefill survive
    sharing a batch with requests that use other values."""
    full = alone(PROMPTS[1], SamplingParams(seed=11, max_tokens=24)).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    named = {"type": "function", "function": {"name": "set_light"}}
    cases = [
        (PROMPTS[0], GREEDY, {}),
        (PROMPTS[1], SamplingParams(seed=11, max_tokens=24, stop=[stop]), {}),
        (PROMPTS[2], SamplingParams(temperature=0, max_tokens=3), {}),
        (PROMPTS[3], SamplingParams(seed=5, max_tokens=12, n=3), {}),
        (PROMPTS[4], SamplingParams(temperature=0.7, top_p=0.9, seed=9, max_tokens=16), {}),
        (PROMPTS[5], SamplingParams(temperature=0, max_tokens=6, n=2), {}),
        (PROMPTS[6], SamplingParams(temperature=0, max_tokens=5), {"tools": TOOLS, "tool_choice": named}),
        (PROMPTS[7], SamplingParams(temperature=0, max_tokens=40), {}),
    ]
    loader = GatedLoader(hold=True)
    s = Sampler(loader=loader)
    calls = [lambda c=c: s.generate(ref, c[0], c[2].get("tools"), c[1], c[2].get("tool_choice")) for c in cases]
    results = run_concurrently(s, loader, calls)
    assert loader.rows == [1, 1 + 1 + 3 + 1 + 1 + 1 + 1]  # greedy n=2 is one row; sampled n=3 is three
    for (messages, params, kw), r in zip(cases, results):
        want = alone(messages, params, **kw)
        assert texts(r) == texts(want), params
        assert [c.finish_reason for c in r.choices] == [c.finish_reason for c in want.choices]
        assert r.usage == want.usage
    assert results[1].choices[0].text == full[:full.index(stop)] and results[1].choices[0].finish_reason == "stop"
    assert results[2].completion_tokens == 3 and results[2].choices[0].finish_reason == "length"
    assert results[6].choices[0].text.startswith('<tool_call>\n{"name": "set_light", "arguments": ')
    assert len(set(texts(results[3]))) > 1  # three samples, not one copied


def test_seeded_request_gives_the_same_tokens_alone_or_batched(ref, alone):
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=20, n=2)
    want = texts(alone(PROMPTS[2], seeded))
    for neighbours in ([PROMPTS[3], PROMPTS[0]], [PROMPTS[5]] * 5):
        loader = GatedLoader(hold=True)
        s = Sampler(loader=loader)
        calls = [lambda: s.generate(ref, PROMPTS[0], None, GREEDY)]
        calls += [lambda m=m: s.generate(ref, m, None, SamplingParams(max_tokens=30)) for m in neighbours]
        calls.insert(2, lambda: s.generate(ref, PROMPTS[2], None, seeded))
        results = run_concurrently(s, loader, calls)
        assert loader.rows[-1] == len(neighbours) + 2
        assert texts(results[2]) == want


def test_unseeded_sampling_follows_the_global_seed(ref):
    import torch

    s = Sampler(batch_window_s=0)
    p = SamplingParams(temperature=1.0, max_tokens=12)
    torch.manual_seed(99)
    a = texts(s.generate(ref, PROMPTS[1], None, p))
    torch.manual_seed(99)
    assert texts(s.generate(ref, PROMPTS[1], None, p)) == a


def test_context_length_error_stays_with_its_request(ref):
    loader = GatedLoader(hold=True, context=60)
    s = Sampler(loader=loader)
    too_long = [{"role": "user", "content": "word " * 100}]
    calls = [lambda: s.generate(ref, PROMPTS[0], None, GREEDY),
             lambda: s.generate(ref, PROMPTS[1], None, SamplingParams(temperature=0, max_tokens=500)),
             lambda: s.generate(ref, too_long, None, GREEDY),
             lambda: s.generate(ref, PROMPTS[2], None, GREEDY)]
    results = run_concurrently(s, loader, calls)
    assert isinstance(results[2], InvalidRequestError) and results[2].code == "context_length_exceeded"
    assert loader.rows == [1, 2]  # the bad request never reached the model
    long = results[1]  # clamped to its own context left, not to the padded batch's width
    assert long.prompt_tokens + long.completion_tokens <= 60 and long.completion_tokens > 10
    assert all(r.completion_tokens > 0 for r in (results[0], results[3]))


def test_a_request_that_breaks_generate_fails_alone(ref, alone, tiny_tokenizer):
    bad = [{"role": "user", "content": "zebra"}]
    def ids(messages):
        text = tiny_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return set(tiny_tokenizer(text, add_special_tokens=False)["input_ids"])

    poison = min(ids(bad) - set().union(*(ids(m) for m in PROMPTS[:3])))  # a token only the bad prompt has
    loader = GatedLoader(hold=True, fail_on_token=poison)
    s = Sampler(loader=loader)
    calls = [lambda: s.generate(ref, PROMPTS[0], None, GREEDY), lambda: s.generate(ref, PROMPTS[1], None, GREEDY),
             lambda: s.generate(ref, bad, None, GREEDY), lambda: s.generate(ref, PROMPTS[2], None, GREEDY)]
    results = run_concurrently(s, loader, calls)
    assert isinstance(results[2], RuntimeError) and "poisoned" in str(results[2])
    assert loader.rows == [1, 3, 1, 1, 1]  # the batch of 3 failed, then each was retried alone
    for i, messages in ((0, PROMPTS[0]), (1, PROMPTS[1]), (3, PROMPTS[2])):
        assert texts(results[i]) == texts(alone(messages, GREEDY))


def test_short_request_returns_before_its_long_batch_mate(ref):
    loader = GatedLoader(hold=True)
    s = Sampler(loader=loader)
    finished: dict[str, float] = {}
    long_done = threading.Event()

    def long_call():
        r = s.generate(ref, PROMPTS[1], None, SamplingParams(temperature=0, max_tokens=80))
        finished["long"] = time.monotonic()
        long_done.set()
        return r

    def short_call():
        r = s.generate(ref, PROMPTS[2], None, SamplingParams(temperature=0, max_tokens=2))
        finished["short"] = time.monotonic()
        finished["long_running"] = not long_done.is_set()
        return r

    results = run_concurrently(s, loader, [lambda: s.generate(ref, PROMPTS[0], None, GREEDY), long_call, short_call])
    assert loader.rows == [1, 2]
    assert finished["long_running"] and finished["short"] < finished["long"]  # handed back at step 2 of 80
    assert results[2].completion_tokens == 2 and results[1].completion_tokens > 2


def test_streams_are_batched_and_match_generate(ref, alone):
    loader = GatedLoader(hold=True)
    s = Sampler(loader=loader)
    p = SamplingParams(temperature=0, max_tokens=16)

    def streamed(messages, close_after_first=False):
        it = s.stream(ref, messages, None, p)
        events = []
        for ev in it:
            events.append(ev)
            if close_after_first and ev.delta:
                it.close()  # the client went away: its row ends, batch-mates carry on
                break
        return events

    calls = [lambda: s.generate(ref, PROMPTS[0], None, GREEDY), lambda: streamed(PROMPTS[1]),
             lambda: streamed(PROMPTS[2]), lambda: streamed(PROMPTS[4], close_after_first=True),
             lambda: s.generate(ref, PROMPTS[3], None, p)]
    results = run_concurrently(s, loader, calls)
    assert loader.rows == [1, 4]
    for i, messages in ((1, PROMPTS[1]), (2, PROMPTS[2])):
        events, want = results[i], alone(messages, p)
        assert "".join(e.delta for e in events) == want.choices[0].text
        assert events[-1].finish_reason == want.choices[0].finish_reason and events[-1].usage == want.usage
    assert texts(results[4]) == texts(alone(PROMPTS[3], p))


def test_different_models_do_not_share_a_batch(ref, alone, tmp_path):
    import shutil

    other = ModelRef(shutil.copytree(ref.base_dir, tmp_path / "copy"))
    loader = GatedLoader(hold=True)
    s = Sampler(loader=loader)
    s.load(other)
    calls = [lambda: s.generate(ref, PROMPTS[0], None, GREEDY), lambda: s.generate(other, PROMPTS[1], None, GREEDY),
             lambda: s.generate(ref, PROMPTS[2], None, GREEDY), lambda: s.generate(other, PROMPTS[3], None, GREEDY)]
    results = run_concurrently(s, loader, calls)
    assert sorted(loader.rows) == [1, 1, 2]  # ref's two queued requests together, other's separately
    for i, r in enumerate(results):
        assert texts(r) == texts(alone(PROMPTS[i], GREEDY))


def test_max_batch_rows_caps_a_batch(ref):
    loader = GatedLoader(hold=True)
    s = Sampler(loader=loader, max_batch_rows=3)
    calls = [lambda m=m: s.generate(ref, m, None, GREEDY) for m in PROMPTS[:6]]
    run_concurrently(s, loader, calls)
    assert loader.rows == [1, 3, 2]
    assert s.batch_history == [(1, 1), (3, 3), (2, 2)]


@pytest.fixture(scope="module")
def two_adapters(ref, tmp_path_factory):
    """Two LoRA adapters of modelmill-tiny that visibly change its output, plus one whose LoRA also
    covers the embeddings (a layer kind only PEFT's own mixed batch handles)."""
    return [ModelRef(ref.base_dir, random_lora_adapter(ref.base_dir, tmp_path_factory.mktemp(f"adapter{seed}"), seed=seed,
                                                       r=2 + seed, targets=targets))
            for seed, targets in ((1, ["q_proj", "v_proj", "down_proj"]), (2, "all-linear"), (3, ["embed_tokens", "q_proj"]))]


def test_requests_for_different_adapters_of_one_base_share_one_generate(ref, alone, two_adapters):
    a, b, _ = two_adapters
    loader = GatedLoader(hold=True)
    s = Sampler(loader=loader)
    s.load(a), s.load(b)  # both adapters on the one cached base
    plan = [(a, PROMPTS[0]), (a, PROMPTS[1]), (b, PROMPTS[2]), (ref, PROMPTS[3]), (b, PROMPTS[4]), (a, PROMPTS[5])]
    calls = [lambda r=r, m=m: s.generate(r, m, None, GREEDY) for r, m in plan]
    results = run_concurrently(s, loader, calls)
    assert loader.rows == [1, 5]  # the first alone, then 3 adapters' requests (base included) in ONE generate()
    for (r, m), got in zip(plan, results):
        assert texts(got) == texts(alone(m, GREEDY, ref=r))  # each row decoded with its own adapter
    assert len({texts(alone(PROMPTS[0], GREEDY, ref=r))[0] for r in (ref, a, b)}) == 3


def test_mixed_batches_of_other_lora_layer_kinds_fall_back_to_peft(ref, alone, two_adapters):
    a, _, emb = two_adapters
    loader = GatedLoader(hold=True)
    s = Sampler(loader=loader)
    s.load(a), s.load(emb)
    plan = [(a, PROMPTS[0]), (emb, PROMPTS[1]), (a, PROMPTS[2]), (ref, PROMPTS[3])]
    results = run_concurrently(s, loader, [lambda r=r, m=m: s.generate(r, m, None, GREEDY) for r, m in plan])
    assert loader.rows == [1, 3]
    for (r, m), got in zip(plan, results):
        assert texts(got) == texts(alone(m, GREEDY, ref=r))


def test_sampled_and_streamed_requests_keep_their_own_adapter_in_a_mixed_batch(ref, two_adapters):
    a, b, _ = two_adapters
    sampled = SamplingParams(temperature=0.9, max_tokens=8, n=2, seed=11)
    solo = Sampler(batch_window_s=0)
    want_sampled = texts(solo.generate(b, PROMPTS[1], None, sampled))
    want_stream = solo.generate(a, PROMPTS[2], None, GREEDY)
    loader = GatedLoader(hold=True)
    s = Sampler(loader=loader)
    s.load(a), s.load(b)
    calls = [lambda: s.generate(a, PROMPTS[0], None, GREEDY), lambda: s.generate(b, PROMPTS[1], None, sampled),
             lambda: list(s.stream(a, PROMPTS[2], None, GREEDY))]
    results = run_concurrently(s, loader, calls)
    assert loader.rows == [1, 3]
    assert texts(results[1]) == want_sampled
    assert "".join(e.delta for e in results[2]) == want_stream.choices[0].text
    assert results[2][-1].usage == want_stream.usage
