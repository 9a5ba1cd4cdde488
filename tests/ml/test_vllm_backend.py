"""The vLLM inference backend (ml/vllm_backend.py) against a server that speaks vLLM's endpoints.

By default the server is tests/ml/vllm_standin.py (transformers + PEFT with modelmill-tiny behind
vLLM's request and response shapes; vLLM has no CPU wheel here), started on 127.0.0.1. With
MODELMILL_TEST_VLLM_URL set the same tests run against that real vLLM server instead, which must
serve MODELMILL_TEST_VLLM_MODEL (a local model directory; default: a modelmill-tiny build) with
`--enable-lora --max-lora-rank 16` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, on this machine's
filesystem (adapters are loaded by path). Assertions that compare tokens with the transformers
backend run against the stand-in only: a real vLLM computes in other kernels (and often bf16).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from pathlib import Path

import httpx
import pytest

from modelmill.errors import InvalidRequestError
from modelmill.ml.sampling import Sampler, SamplingParams
from modelmill.ml.types import ModelRef
from modelmill.ml.vllm_backend import InferenceBackendError, VLLMBackend
from tests.ml import vllm_standin
from tests.ml.lora_adapters import random_lora_adapter

REAL_URL = os.environ.get("MODELMILL_TEST_VLLM_URL")
STANDIN = REAL_URL is None
USER = [{"role": "user", "content": "Turn on the kitchen lights"}]
TOOLS = [{"type": "function", "function": {"name": "set_light", "parameters": {
    "type": "object", "properties": {"room": {"type": "string"}}}}}]
GREEDY = SamplingParams(temperature=0, max_tokens=10)


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir) -> Path:
    return Path(os.environ.get("MODELMILL_TEST_VLLM_MODEL") or tiny_model_dir)


@pytest.fixture(scope="module")
def server_url(base_dir):
    if REAL_URL:
        yield REAL_URL
        return
    with vllm_standin.running(base_dir) as url:
        yield url


@pytest.fixture(scope="module")
def adapters(base_dir, tmp_path_factory) -> list[Path]:
    """Two LoRA adapters that visibly change the model's output (random A and B, scaled up)."""
    return [random_lora_adapter(base_dir, tmp_path_factory.mktemp(f"adapter{seed}"), seed=seed, r=4,
                                targets=["q_proj", "v_proj", "down_proj"]).resolve()
            for seed in (1, 2)]


@pytest.fixture(scope="module")
def vllm(server_url) -> Sampler:
    return Sampler(backend=VLLMBackend(server_url))


@pytest.fixture(scope="module")
def local() -> Sampler:
    return Sampler(batch_window_s=0)


def texts(result) -> list[str]:
    return [c.text for c in result.choices]


def test_base_and_adapters_decode_on_the_server_with_modelmill_rendering(vllm, local, base_dir, adapters):
    refs = [ModelRef(base_dir)] + [ModelRef(base_dir, a) for a in adapters]
    got = [vllm.generate(r, USER, None, GREEDY) for r in refs]
    assert len({texts(g)[0] for g in got}) == 3  # each adapter changes the answer: the right LoRA was used
    for r, g in zip(refs, got):
        want = local.generate(r, USER, None, GREEDY)
        assert g.prompt_tokens == want.prompt_tokens  # the prompt ModelMill rendered and tokenized
        assert g.completion_tokens == g.choices[0].completion_tokens <= GREEDY.max_tokens
        if STANDIN:  # same weights, same float32 math: the same tokens as the transformers backend
            assert texts(g) == texts(want) and g.choices[0].finish_reason == want.choices[0].finish_reason


def test_each_adapter_is_loaded_once_and_registered_under_the_base(vllm, server_url, base_dir, adapters):
    for _ in range(2):
        vllm.generate(ModelRef(base_dir, adapters[0]), USER, None, SamplingParams(temperature=0, max_tokens=2))
    host = vllm._get(base_dir.resolve()).model
    assert host.adapters().count(adapters[0]) == 1
    cards = httpx.get(server_url + "/v1/models").json()["data"]
    loras = [c for c in cards if c.get("parent")]
    assert any(c["root"] == str(adapters[0]) and c["parent"] == host.served_name for c in loras)
    assert (base_dir.resolve(), adapters[0]) in vllm.cached()


def test_stop_strings_cut_the_text_and_finish_with_stop(vllm, base_dir, adapters):
    ref = ModelRef(base_dir, adapters[0])
    full = vllm.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=12)).choices[0].text
    stop = full.strip()[2:5]
    assert stop
    got = vllm.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=12, stop=[stop])).choices[0]
    assert got.text == full[:full.find(stop)] and got.finish_reason == "stop" and stop not in got.text


def test_n_and_seed_are_passed_through(vllm, base_dir, adapters):
    ref = ModelRef(base_dir, adapters[1])
    params = SamplingParams(temperature=1.0, max_tokens=6, n=3, seed=7)
    a, b = vllm.generate(ref, USER, None, params), vllm.generate(ref, USER, None, params)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert texts(a) == texts(b)  # seeded: repeatable
    assert a.completion_tokens == sum(c.completion_tokens for c in a.choices)
    assert a.usage == {"prompt_tokens": a.prompt_tokens, "completion_tokens": a.completion_tokens,
                       "total_tokens": a.prompt_tokens + a.completion_tokens}
    greedy = vllm.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=6, n=2))
    assert len(set(texts(greedy))) == 1 and len(greedy.choices) == 2


def test_stream_gives_the_same_text_and_usage_as_generate(vllm, base_dir, adapters):
    ref = ModelRef(base_dir, adapters[0])
    want = vllm.generate(ref, USER, None, GREEDY)
    events = list(vllm.stream(ref, USER, None, GREEDY))
    assert "".join(e.delta for e in events) == want.choices[0].text
    assert events[-1].finish_reason == want.choices[0].finish_reason and events[-1].usage == want.usage


def test_tool_choice_prefill_and_parsing_run_in_modelmill(vllm, local, base_dir, adapters):
    ref = ModelRef(base_dir, adapters[0])
    forced = {"type": "function", "function": {"name": "set_light"}}
    got = vllm.generate(ref, USER, TOOLS, GREEDY, tool_choice=forced)
    want = local.generate(ref, USER, TOOLS, GREEDY, tool_choice=forced)
    assert got.choices[0].text.startswith('<tool_call>\n{"name": "set_light", "arguments": ')
    assert got.prompt_tokens == want.prompt_tokens  # the prefill is part of the prompt ModelMill sent
    if STANDIN:
        assert got.choices[0].finish_reason == want.choices[0].finish_reason
        assert got.choices[0].content == want.choices[0].content


def test_response_format_and_forced_calls_are_sent_as_structured_outputs(vllm, server_url, base_dir):
    """The constraint travels as vLLM's `structured_outputs` and the server enforces it (the stand-in
    with llguidance, as vLLM's guidance backend does): the random tiny model answers valid JSON."""
    import json

    schema = {"type": "object", "additionalProperties": False, "required": ["room", "on"],
              "properties": {"room": {"type": "string", "enum": ["kitchen", "hall"]}, "on": {"type": "boolean"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "light", "schema": schema, "strict": True}}
    got = vllm.generate(ModelRef(base_dir), USER, None, SamplingParams(temperature=0, max_tokens=30, response_format=fmt))
    assert got.choices[0].finish_reason == "stop"
    assert json.loads(got.choices[0].content)["room"] in ("kitchen", "hall")
    tools = [{"type": "function", "function": {"name": "set_light", "parameters": schema}}]
    forced = vllm.generate(ModelRef(base_dir), USER, tools, SamplingParams(temperature=0, max_tokens=30),
                           tool_choice="required")
    assert forced.choices[0].finish_reason == "tool_calls"
    assert forced.choices[0].tool_calls[0]["function"]["name"] == "set_light"
    if STANDIN:
        sent = httpx.get(server_url + "/standin/structured_outputs").json()
        assert {"json": schema, "disable_any_whitespace": True} in sent
        assert any("grammar" in s and "%json" in s["grammar"] for s in sent)


def test_strict_tools_under_auto_send_their_grammar(vllm, server_url, base_dir):
    """Text or a schema-valid call (ml/constraints.py for_auto_tools) goes as a `grammar`; the random
    model answers in text, which the grammar leaves free."""
    tools = [{"type": "function", "function": {"name": "set_light", "strict": True, "parameters": TOOLS[0]["function"][
        "parameters"]}}]
    got = vllm.generate(ModelRef(base_dir), USER, tools, SamplingParams(temperature=0, max_tokens=6))
    assert not got.choices[0].tool_calls and got.choices[0].content
    if STANDIN:
        sent = httpx.get(server_url + "/standin/structured_outputs").json()
        assert any('"<tool_call>"' in s.get("grammar", "") and "set_light" in s["grammar"] for s in sent)


def test_concurrent_requests_for_different_adapters(vllm, base_dir, adapters):
    refs = [ModelRef(base_dir), ModelRef(base_dir, adapters[0]), ModelRef(base_dir, adapters[1])] * 2
    alone = {r: texts(vllm.generate(r, USER, None, GREEDY)) for r in refs[:3]}
    out: dict[int, list[str]] = {}
    threads = [threading.Thread(target=lambda i=i, r=r: out.__setitem__(i, texts(vllm.generate(r, USER, None, GREEDY))))
               for i, r in enumerate(refs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [out[i] for i in range(len(refs))] == [alone[r] for r in refs]


def test_batch_generate_sends_every_prompt(vllm, base_dir, adapters):
    convs = [[{"role": "user", "content": f"Say {i}"}] for i in range(4)]
    results = vllm.batch_generate(ModelRef(base_dir, adapters[1]), convs, SamplingParams(temperature=0, max_tokens=4))
    assert len(results) == 4 and all(len(r.choices) == 1 and r.prompt_tokens > 0 for r in results)


def test_request_errors(vllm, server_url, base_dir, tmp_path):
    with pytest.raises(InvalidRequestError) as ei:  # checked in ModelMill, before anything is sent
        vllm.generate(ModelRef(base_dir), [{"role": "user", "content": "word " * 9000}], None, GREEDY)
    assert ei.value.code == "context_length_exceeded"
    other = ModelRef(shutil.copytree(base_dir, tmp_path / "not-served"))
    with pytest.raises(InvalidRequestError, match="vllm serve"):
        vllm.generate(other, USER, None, GREEDY)
    with pytest.raises(LookupError):
        vllm.generate(ModelRef(base_dir, tmp_path / "no-adapter"), USER, None, GREEDY)


def test_an_unreachable_server_is_a_502_not_a_crash(base_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sampler = Sampler(backend=VLLMBackend(f"http://127.0.0.1:{port}", timeout_s=5))
    with pytest.raises(InferenceBackendError) as ei:
        sampler.generate(ModelRef(base_dir), USER, None, GREEDY)
    assert ei.value.status == 502 and "unreachable" in ei.value.message


def test_an_adapter_the_server_lost_is_loaded_again(vllm, server_url, base_dir, adapters):
    ref = ModelRef(base_dir, adapters[1])
    want = vllm.generate(ref, USER, None, GREEDY)
    name = vllm._get(base_dir.resolve()).model.acquire(adapters[1])
    vllm._get(base_dir.resolve()).model.release(name)
    for call in (lambda: vllm.generate(ref, USER, None, GREEDY),
                 lambda: list(vllm.stream(ref, USER, None, GREEDY))):
        # What a vLLM restart looks like from here: the server no longer knows the LoRA name.
        assert httpx.post(server_url + "/v1/unload_lora_adapter", json={"lora_name": name}).status_code == 200
        got = call()
        text = got.choices[0].text if hasattr(got, "choices") else "".join(e.delta for e in got)
        assert text == want.choices[0].text


def test_logprobs_logit_bias_and_penalties_are_passed_through(vllm, local, base_dir):
    """logprobs come back as ModelMill's StepLogprobs (same entries in generate and stream); with
    no bias or penalty they are the model's own, so the stand-in matches the transformers backend.
    logit_bias and the penalties reach the server and change what it decodes as they do locally."""
    ref = ModelRef(base_dir)
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    got = vllm.generate(ref, USER, None, params).choices[0]
    assert got.logprobs and all(len(e["top_logprobs"]) == 3 for e in got.logprobs)
    assert "".join(e["token"] for e in got.logprobs) == got.text
    streamed = [e for ev in vllm.stream(ref, USER, None, params) for e in ev.logprobs or []]
    assert streamed == got.logprobs
    if STANDIN:
        want = local.generate(ref, USER, None, params).choices[0]
        assert [e["token"] for e in got.logprobs] == [e["token"] for e in want.logprobs]
        assert [e["logprob"] for e in got.logprobs] == pytest.approx([e["logprob"] for e in want.logprobs], abs=1e-4)
    forced = vllm.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=4, logit_bias={260: 100}))
    assert forced.choices[0].text == " the" * 4
    penalised = SamplingParams(temperature=0, max_tokens=16, frequency_penalty=2.0, presence_penalty=0.5)
    text = vllm.generate(ref, USER, None, penalised).choices[0].text
    assert text != vllm.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=16)).choices[0].text
    if STANDIN:
        assert text == local.generate(ref, USER, None, penalised).choices[0].text
