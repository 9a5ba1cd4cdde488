"""Sampling: model cache, determinism, stop/length/tool_calls finish reasons, n, streaming.

Real decoding runs on modelmill-tiny (random weights, so its text is noise but deterministic);
tool-call and stop-string behaviour that needs specific text runs on a scripted fake model
that "generates" a fixed string through the same generate() interface."""

from __future__ import annotations

import shutil
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from modelmill.errors import InvalidRequestError, NotFoundError
from modelmill.ml import models
from modelmill.ml.sampling import Sampler, SamplingParams, StreamEvent
from modelmill.ml.types import ModelRef

USER = [{"role": "user", "content": "Turn on the kitchen lights"}]
TOOLS = [{"type": "function", "function": {"name": "set_light", "parameters": {
    "type": "object", "properties": {"room": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_temp", "parameters": {"type": "object"}}}]


class CountingLoader:
    def __init__(self, delay: float = 0.0):
        self.calls: list[tuple] = []
        self.delay = delay

    def __call__(self, base_dir, adapter_dir):
        self.calls.append((base_dir, adapter_dir))
        time.sleep(self.delay)
        return models.load_model(base_dir, adapter_dir)


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    return ModelRef(tiny_model_dir)


@pytest.fixture(scope="module")
def sampler():
    return Sampler(cache_size=2, loader=CountingLoader())


def text_of(result) -> list[str]:
    return [c.text for c in result.choices]


def joined(events: list[StreamEvent]) -> str:
    return "".join(e.delta for e in events)


# ------------------------------------------------------------------------------------ params


@pytest.mark.parametrize("kw,param", [
    ({"temperature": 2.5}, "temperature"), ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 1.5}, "top_p"), ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 2.5}, "max_tokens"),
    ({"n": 0}, "n"), ({"n": 1000}, "n"), ({"seed": "x"}, "seed"), ({"stop": ["a"] * 5}, "stop"),
    ({"stop": [1]}, "stop"),
])
def test_bad_params_raise_invalid_request(kw, param):
    with pytest.raises(InvalidRequestError) as ei:
        SamplingParams(**kw)
    assert ei.value.param == param


def test_stop_string_is_wrapped_and_empty_dropped():
    assert SamplingParams(stop="END").stop == ["END"]
    assert SamplingParams(stop=["", "x"]).stop == ["x"]
    assert SamplingParams(stop=[""]).stop is None
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_p=0).greedy and not SamplingParams().greedy


# ------------------------------------------------------------------------------------ cache


def test_second_request_does_not_reload(ref):
    loader = CountingLoader()
    s = Sampler(loader=loader)
    a = s.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=4))
    b = s.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=4))
    assert len(loader.calls) == 1 and s.load_count == 1 and text_of(a) == text_of(b)
    assert s.cached() == [(ref.base_dir.resolve(), None)]


def test_concurrent_first_requests_load_once(ref):
    loader = CountingLoader(delay=0.3)
    s = Sampler(loader=loader)
    out = []
    threads = [threading.Thread(target=lambda: out.append(s.load(ref))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loader.calls) == 1 and len(out) == 4 and all(o[0] is out[0][0] for o in out)


def test_lru_eviction_and_adapters_share_their_base(ref, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, _ = models.load_model(ref.base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    assert (adapter / "adapter_model.safetensors").is_file()
    other_base = tmp_path / "copy"
    shutil.copytree(ref.base_dir, other_base)

    loader = CountingLoader()
    s = Sampler(cache_size=1, loader=loader)
    with_adapter = ModelRef(ref.base_dir, adapter)
    greedy = SamplingParams(temperature=0, max_tokens=8)
    base_out = s.generate(ref, USER, None, greedy)
    adapter_out = s.generate(with_adapter, USER, None, greedy)
    assert len(loader.calls) == 1  # the adapter was loaded onto the cached base, not with a second base
    assert s.cached() == [(ref.base_dir.resolve(), None), (ref.base_dir.resolve(), adapter.resolve())]
    assert text_of(adapter_out) == text_of(Sampler(loader=lambda b, _: models.load_model(b, adapter)).generate(
        ref, USER, None, greedy))  # the same tokens as the adapter merged into a copy of its own
    s.generate(ModelRef(other_base), USER, None, greedy)  # evicts the least recently used base: ref
    assert s.cached() == [(other_base.resolve(), None)]
    assert text_of(s.generate(ref, USER, None, greedy)) == text_of(base_out)
    assert len(loader.calls) == 3
    assert text_of(s.generate(with_adapter, USER, None, greedy)) == text_of(adapter_out)
    assert s.evict(with_adapter) and not s.evict(with_adapter)
    assert s.cached() == [(ref.base_dir.resolve(), None)]
    assert s.evict(ref) and not s.evict(ref)


def test_adapters_beyond_max_adapters_are_dropped_least_recent_first(ref, tmp_path):
    from peft import LoraConfig, get_peft_model

    dirs = []
    for i in range(3):
        model, _ = models.load_model(ref.base_dir)
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)).save_pretrained(
            tmp_path / f"a{i}")
        dirs.append((tmp_path / f"a{i}").resolve())
    s = Sampler(loader=CountingLoader(), max_adapters=2)
    greedy = SamplingParams(temperature=0, max_tokens=2)
    for d in dirs:
        s.generate(ModelRef(ref.base_dir, d), USER, None, greedy)
    assert [a for _, a in s.cached()] == [None, dirs[1], dirs[2]]
    with pytest.raises(NotFoundError):
        s.generate(ModelRef(ref.base_dir, tmp_path / "missing"), USER, None, greedy)


def test_missing_model_dir_is_not_found(tmp_path):
    s = Sampler(loader=CountingLoader())
    with pytest.raises(NotFoundError):
        s.generate(ModelRef(tmp_path / "nope"), USER, None, SamplingParams(max_tokens=2))
    with pytest.raises(LookupError):  # NotFoundError is a LookupError; nothing left half-loaded
        s.generate(ModelRef(tmp_path / "nope"), USER, None, SamplingParams(max_tokens=2))
    assert s.load_count == 0


# ------------------------------------------------------------------------------- generation


def test_max_tokens_gives_length_and_counts_tokens(sampler, ref, tiny_tokenizer):
    r = sampler.generate(ref, USER, None, SamplingParams(seed=1, max_tokens=5))
    (c,) = r.choices
    assert c.finish_reason == "length" and c.completion_tokens == 5 and r.completion_tokens == 5
    prompt = tiny_tokenizer.apply_chat_template(USER, add_generation_prompt=True, tokenize=False)
    assert r.prompt_tokens == len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert r.usage == {"prompt_tokens": r.prompt_tokens, "completion_tokens": 5, "total_tokens": r.prompt_tokens + 5}


def test_greedy_is_deterministic(sampler, ref):
    p = SamplingParams(temperature=0, max_tokens=12)
    assert text_of(sampler.generate(ref, USER, None, p)) == text_of(sampler.generate(ref, USER, None, p))


def test_seed_makes_sampling_deterministic(sampler, ref):
    p = SamplingParams(temperature=1.0, seed=7, max_tokens=12, n=2)
    a, b = sampler.generate(ref, USER, None, p), sampler.generate(ref, USER, None, p)
    assert text_of(a) == text_of(b)
    assert a.choices[0].text != a.choices[1].text  # two samples, not one copied
    c = sampler.generate(ref, USER, None, SamplingParams(temperature=1.0, seed=8, max_tokens=12, n=2))
    assert text_of(c) != text_of(a)


def test_seeded_generation_restores_global_rng(sampler, ref):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sampler.generate(ref, USER, None, SamplingParams(seed=5, max_tokens=4))
    assert torch.equal(torch.rand(3), expected)


def test_n_choices(sampler, ref):
    r = sampler.generate(ref, USER, None, SamplingParams(seed=3, max_tokens=6, n=3))
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.completion_tokens == sum(c.completion_tokens for c in r.choices) == 18
    g = sampler.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=6, n=2))
    assert [c.index for c in g.choices] == [0, 1] and g.choices[0].text == g.choices[1].text
    assert g.completion_tokens == 12


def test_stop_string_truncates_and_finishes_stop(sampler, ref):
    base = SamplingParams(seed=11, max_tokens=24)
    full = sampler.generate(ref, USER, None, base).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    assert stop.strip(), f"need a non-blank stop string from {full!r}"
    cut = full.index(stop)
    r = sampler.generate(ref, USER, None, SamplingParams(seed=11, max_tokens=24, stop=[stop, "never-appears"]))
    (c,) = r.choices
    assert c.text == full[:cut] and c.finish_reason == "stop"
    assert c.completion_tokens < 24


def test_batch_generate(sampler, ref):
    convs = [USER, [{"role": "user", "content": "a much longer prompt, so that the batch needs left padding"}],
             [{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]]
    p = SamplingParams(temperature=0, max_tokens=8)
    results = sampler.batch_generate(ref, convs, p)
    assert len(results) == 3 and results[1].prompt_tokens > results[0].prompt_tokens
    for conv, r in zip(convs, results):  # left padding does not change greedy output
        assert text_of(r) == text_of(sampler.generate(ref, conv, None, p))
    assert sampler.batch_generate(ref, [], p) == []
    per_item = sampler.batch_generate(ref, [USER, USER], p, tools=[TOOLS, None])
    assert per_item[0].prompt_tokens > per_item[1].prompt_tokens  # tools rendered for the first only


def test_context_length_exceeded(ref):
    def small_context(base_dir, adapter_dir):
        model, tok = models.load_model(base_dir, adapter_dir)
        model.config.max_position_embeddings = 40
        return model, tok

    s = Sampler(loader=small_context)
    r = s.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=100))
    assert r.prompt_tokens + r.completion_tokens <= 40 and r.choices[0].finish_reason == "length"
    with pytest.raises(InvalidRequestError) as ei:
        s.generate(ref, [{"role": "user", "content": "word " * 100}], None, SamplingParams(max_tokens=1))
    assert ei.value.code == "context_length_exceeded"
    with pytest.raises(InvalidRequestError):
        s.stream(ref, [{"role": "user", "content": "word " * 100}], None, SamplingParams(max_tokens=1))


# ------------------------------------------------------------------------------- tool choice


def test_tool_choice_validation(sampler, ref):
    p = SamplingParams(max_tokens=2)
    with pytest.raises(InvalidRequestError):
        sampler.generate(ref, USER, None, p, tool_choice="required")
    with pytest.raises(InvalidRequestError):
        sampler.generate(ref, USER, TOOLS, p, tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(InvalidRequestError):
        sampler.generate(ref, USER, TOOLS, p, tool_choice="sometimes")
    with pytest.raises(InvalidRequestError):  # raised by the call itself, before any event
        sampler.stream(ref, USER, None, p, tool_choice="required")


def test_tool_choice_none_hides_tools_and_named_prefills(sampler, ref):
    p = SamplingParams(temperature=0, max_tokens=3)
    plain = sampler.generate(ref, USER, None, p)
    auto = sampler.generate(ref, USER, TOOLS, p)
    none = sampler.generate(ref, USER, TOOLS, p, tool_choice="none")
    assert auto.prompt_tokens > plain.prompt_tokens and none.prompt_tokens == plain.prompt_tokens
    named = sampler.generate(ref, USER, TOOLS, p, tool_choice={"type": "function", "function": {"name": "get_temp"}})
    assert named.choices[0].text.startswith('<tool_call>\n{"name": "get_temp", "arguments": ')
    assert named.prompt_tokens > auto.prompt_tokens  # the prefill counts as prompt
    required = sampler.generate(ref, USER, TOOLS, p, tool_choice="required")
    assert required.choices[0].text.startswith('<tool_call>\n{"name": "')


# ------------------------------------------------------------------------------- streaming


def test_stream_greedy_equals_generate(sampler, ref):
    p = SamplingParams(temperature=0, max_tokens=16)
    events = list(sampler.stream(ref, USER, None, p))
    want = sampler.generate(ref, USER, None, p)
    assert joined(events) == want.choices[0].text
    final = events[-1]
    assert final.finish_reason == want.choices[0].finish_reason == "length"
    assert final.usage == want.usage
    assert all(e.finish_reason is None and e.usage is None for e in events[:-1])


def test_stream_seeded_sampling_equals_generate(sampler, ref):
    p = SamplingParams(seed=21, max_tokens=20)
    assert joined(list(sampler.stream(ref, USER, None, p))) == sampler.generate(ref, USER, None, p).choices[0].text


def test_stream_with_stop_matches_generate(sampler, ref):
    full = sampler.generate(ref, USER, None, SamplingParams(seed=11, max_tokens=24)).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    p = SamplingParams(seed=11, max_tokens=24, stop=[stop])
    events = list(sampler.stream(ref, USER, None, p))
    assert joined(events) == full[:full.index(stop)] and events[-1].finish_reason == "stop"
    assert stop not in joined(events)


def test_stream_n2_emits_each_choice(sampler, ref):
    p = SamplingParams(seed=4, max_tokens=6, n=2)
    events = list(sampler.stream(ref, USER, None, p))
    want = sampler.generate(ref, USER, None, p)
    finals = [e for e in events if e.finish_reason]
    assert [e.index for e in finals] == [0, 1] and events[-1].usage == want.usage
    for i in (0, 1):
        assert joined([e for e in events if e.index == i]) == want.choices[i].text


def test_abandoned_stream_releases_the_generator(sampler, ref):
    it = sampler.stream(ref, USER, None, SamplingParams(seed=2, max_tokens=400))
    next(it)
    it.close()  # the client went away
    r = sampler.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=2))  # would deadlock if not
    assert r.completion_tokens == 2


# ------------------------------------------------------------- scripted model (exact text)


class ScriptedModel:
    """Quacks like a causal LM for Sampler: every row 'generates' the same fixed text, one token
    per step, honouring max_new_tokens, the stopping criteria and the streamer."""

    def __init__(self, tokenizer, script: str, eos: bool = True):
        self.script_ids = tokenizer(script, add_special_tokens=False)["input_ids"]
        if eos:
            self.script_ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
        self.pad = tokenizer.pad_token_id
        self.config = SimpleNamespace(max_position_embeddings=8192)
        self.generation_config = None

    def eval(self):
        return self

    def generate(self, input_ids, attention_mask, generation_config, stopping_criteria, streamer=None,
                 logits_processor=None):  # the script is the output: a grammar mask (forced tool calls) has no say
        rows = input_ids.repeat_interleave(generation_config.num_return_sequences, dim=0)
        if streamer is not None:
            streamer.put(input_ids[0])
        done = torch.zeros(rows.shape[0], dtype=torch.bool)
        for tok in self.script_ids[:generation_config.max_new_tokens]:
            nxt = torch.where(done, torch.tensor(self.pad), torch.tensor(tok))
            rows = torch.cat([rows, nxt[:, None]], dim=1)
            if streamer is not None:
                streamer.put(nxt[:1])
            done |= stopping_criteria(rows, None)
            done |= nxt == self.script_ids[-1]
            if bool(done.all()):
                break
        if streamer is not None:
            streamer.end()
        return rows


def scripted(tokenizer, script: str, eos: bool = True) -> Sampler:
    return Sampler(loader=lambda base, adapter: (ScriptedModel(tokenizer, script, eos), tokenizer))


CALL_TEXT = '<tool_call>\n{"name": "set_light", "arguments": {"room": "kitchen"}}\n</tool_call>'


def test_tool_call_is_parsed(ref, tiny_tokenizer):
    s = scripted(tiny_tokenizer, CALL_TEXT)
    (c,) = s.generate(ref, USER, TOOLS, SamplingParams(temperature=0)).choices
    assert c.finish_reason == "tool_calls" and c.content is None and c.text == CALL_TEXT
    assert c.tool_calls[0]["function"] == {"name": "set_light", "arguments": '{"room": "kitchen"}'}
    (plain,) = s.generate(ref, USER, None, SamplingParams(temperature=0)).choices  # no tools: no parsing
    assert plain.finish_reason == "stop" and plain.tool_calls == [] and plain.content == CALL_TEXT
    (none,) = s.generate(ref, USER, TOOLS, SamplingParams(temperature=0), tool_choice="none").choices
    assert none.tool_calls == [] and none.content == CALL_TEXT


def test_named_tool_choice_prefill_completes_to_a_call(ref, tiny_tokenizer):
    s = scripted(tiny_tokenizer, '{"room": "hall"}}\n</tool_call>')  # continues after the prefill
    choice = {"type": "function", "function": {"name": "set_light"}}
    (c,) = s.generate(ref, USER, TOOLS, SamplingParams(temperature=0), tool_choice=choice).choices
    assert c.finish_reason == "tool_calls"
    assert c.tool_calls[0]["function"] == {"name": "set_light", "arguments": '{"room": "hall"}'}
    events = list(s.stream(ref, USER, TOOLS, SamplingParams(temperature=0), tool_choice=choice))
    assert joined(events) == "" and events[-1].finish_reason == "tool_calls"
    assert events[-1].tool_calls[0]["function"]["name"] == "set_light"


def test_stream_holds_back_tool_call_markup(ref, tiny_tokenizer):
    s = scripted(tiny_tokenizer, "Sure, switching it on.\n" + CALL_TEXT)
    events = list(s.stream(ref, USER, TOOLS, SamplingParams(temperature=0)))
    assert "<tool" not in joined(events) and joined(events).startswith("Sure, switching it on.")
    final = events[-1]
    assert final.finish_reason == "tool_calls" and final.tool_calls[0]["function"]["name"] == "set_light"
    (c,) = s.generate(ref, USER, TOOLS, SamplingParams(temperature=0)).choices
    assert c.content == "Sure, switching it on." and c.finish_reason == "tool_calls"


def test_unparseable_tool_call_stays_content(ref, tiny_tokenizer):
    text = "Hmm <tool_call>\n{not json}\n</tool_call> ok"
    s = scripted(tiny_tokenizer, text)
    (c,) = s.generate(ref, USER, TOOLS, SamplingParams(temperature=0)).choices
    assert c.finish_reason == "stop" and c.content == text and c.tool_calls == []
    events = list(s.stream(ref, USER, TOOLS, SamplingParams(temperature=0)))
    assert joined(events) == text and events[-1].finish_reason == "stop"


def test_stop_string_never_leaks_into_stream(ref, tiny_tokenizer):
    s = scripted(tiny_tokenizer, "alpha beta STOP gamma delta")
    p = SamplingParams(temperature=0, stop=["STOP", "zzz"])
    (c,) = s.generate(ref, USER, None, p).choices
    assert c.text == "alpha beta " and c.finish_reason == "stop"
    events = list(s.stream(ref, USER, None, p))
    assert all("ST" not in e.delta for e in events) and joined(events) == "alpha beta "
    assert events[-1].finish_reason == "stop"


def test_eos_gives_stop_and_budget_gives_length(ref, tiny_tokenizer):
    s = scripted(tiny_tokenizer, "one two three")
    (c,) = s.generate(ref, USER, None, SamplingParams(temperature=0)).choices
    assert c.text == "one two three" and c.finish_reason == "stop"
    (c,) = s.generate(ref, USER, None, SamplingParams(temperature=0, max_tokens=2)).choices
    assert c.finish_reason == "length" and c.completion_tokens == 2
    events = list(s.stream(ref, USER, None, SamplingParams(temperature=0, max_tokens=2)))
    assert events[-1].finish_reason == "length" and events[-1].usage["completion_tokens"] == 2


def test_generation_error_reaches_the_stream_consumer(ref, tiny_tokenizer):
    class Broken(ScriptedModel):
        def generate(self, *a, **kw):
            raise RuntimeError("boom")

    s = Sampler(loader=lambda b, a: (Broken(tiny_tokenizer, "x"), tiny_tokenizer))
    with pytest.raises(RuntimeError, match="boom"):
        list(s.stream(ref, USER, None, SamplingParams(temperature=0)))
    with pytest.raises(RuntimeError, match="boom"):
        s.generate(ref, USER, None, SamplingParams(temperature=0))
