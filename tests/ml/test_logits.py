"""logprobs / top_logprobs, logit_bias and the presence / frequency penalties (ml/logits.py) in
the batched sampler on modelmill-tiny: reported logprobs equal a separate forward pass over the
same tokens, and each adjustment is checked by its effect on the output."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from modelmill.errors import InvalidRequestError
from modelmill.ml import logits
from modelmill.ml.sampling import Sampler, SamplingParams
from modelmill.ml.sampling.prompts import render
from modelmill.ml.types import ModelRef

HI = [{"role": "user", "content": "hi"}]
LONGER = [{"role": "user", "content": "a longer prompt, so that the other row of the batch is left-padded"}]


@pytest.fixture(scope="module")
def sampler():
    return Sampler(batch_window_s=0.0)


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    return ModelRef(base_dir=str(tiny_model_dir))


def token_ids(tokenizer, entries: list[dict]) -> list[int]:
    """The token ids behind ChatCompletionTokenLogprob entries (byte-level BPE: bytes -> piece -> id)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()
    return [tokenizer.convert_tokens_to_ids("".join(table[b] for b in e["bytes"])) for e in entries]


def forward_logprobs(sampler, ref, messages, ids, frequency=0.0, presence=0.0):
    """log_softmax of one unbatched forward pass over prompt + ids: one row per generated token,
    with the OpenAI penalties over the tokens before it applied (as the request asked)."""
    model, tokenizer = sampler.load(ref)
    prompt = tokenizer(render(tokenizer, messages, None, None).text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits_T_V = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float()
    for t in range(len(ids)):
        counts = Counter(ids[:t])
        for token, c in counts.items():
            logits_T_V[t, token] -= frequency * c + presence
    return torch.log_softmax(logits_T_V, dim=-1)


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, max_tokens=8, logprobs=True, top_logprobs=5),
    SamplingParams(temperature=1.0, seed=7, max_tokens=8, logprobs=True, top_logprobs=3),
    SamplingParams(temperature=0.7, top_p=0.9, seed=3, max_tokens=8, logprobs=True, top_logprobs=2,
                   frequency_penalty=1.5, presence_penalty=0.5),
], ids=["greedy", "sampled", "penalised"])
def test_logprobs_equal_a_separate_forward_pass(sampler, ref, params):
    """Two conversations of different lengths in one left-padded batch: each row's logprobs are
    those of an unbatched forward pass (after the penalties, before temperature / top_p)."""
    results = sampler.batch_generate(ref, [HI, LONGER], params)
    _, tokenizer = sampler.load(ref)
    for messages, result in zip([HI, LONGER], results):
        entries = result.choices[0].logprobs
        assert entries and len(entries) <= 8
        ids = token_ids(tokenizer, entries)
        assert tokenizer.decode(ids) == result.choices[0].text
        expected_T_V = forward_logprobs(sampler, ref, messages, ids, params.frequency_penalty, params.presence_penalty)
        for t, (entry, token) in enumerate(zip(entries, ids)):
            assert entry["logprob"] == pytest.approx(float(expected_T_V[t, token]), abs=1e-4)
            assert len(entry["top_logprobs"]) == params.top_logprobs
            top_values, top_ids = torch.topk(expected_T_V[t], params.top_logprobs)
            assert [e["logprob"] for e in entry["top_logprobs"]] == pytest.approx(top_values.tolist(), abs=1e-4)
            assert token_ids(tokenizer, entry["top_logprobs"]) == top_ids.tolist()
            if params.greedy:
                assert entry["top_logprobs"][0]["token"] == entry["token"]


def test_entries_have_openai_shape_and_no_logprobs_by_default(sampler, ref):
    plain = sampler.generate(ref, HI, params=SamplingParams(temperature=0, max_tokens=4))
    assert plain.choices[0].logprobs is None
    entry = sampler.generate(ref, HI, params=SamplingParams(temperature=0, max_tokens=4, logprobs=True)).choices[0]
    first = entry.logprobs[0]
    assert set(first) == {"token", "logprob", "bytes", "top_logprobs"} and first["top_logprobs"] == []
    assert bytes(first["bytes"]).decode("utf-8", "replace") == first["token"] and first["logprob"] <= 0


def test_stream_logprobs_concatenate_to_generate(sampler, ref):
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=True, top_logprobs=1, stop=["zzz"])
    whole = sampler.generate(ref, LONGER, params=params).choices[0]
    events = list(sampler.stream(ref, LONGER, params=params))
    streamed = [e for ev in events for e in ev.logprobs or []]
    assert streamed == whole.logprobs
    assert "".join(ev.delta for ev in events) == whole.content


def test_logit_bias_plus_100_forces_a_token(sampler, ref):
    _, tokenizer = sampler.load(ref)
    token = tokenizer.convert_tokens_to_ids("Ġthe")
    for params in (SamplingParams(temperature=0, max_tokens=6, logit_bias={str(token): 100}),
                   SamplingParams(temperature=1.0, seed=1, max_tokens=6, logit_bias={token: 100})):
        choice = sampler.generate(ref, HI, params=params).choices[0]
        assert choice.text == " the" * 6 and choice.finish_reason == "length"


def test_logit_bias_minus_100_bans_the_greedy_token(sampler, ref):
    params = SamplingParams(temperature=0, max_tokens=8, logprobs=True)
    before = sampler.generate(ref, HI, params=params).choices[0]
    _, tokenizer = sampler.load(ref)
    banned = token_ids(tokenizer, before.logprobs[:1])[0]
    after = sampler.generate(ref, HI, params=SamplingParams(temperature=0, max_tokens=8, logprobs=True,
                                                            logit_bias={str(banned): -100})).choices[0]
    assert banned not in token_ids(tokenizer, after.logprobs)
    assert after.text != before.text


def most_repeats(text_entries: list[dict]) -> int:
    return max(Counter(e["token"] for e in text_entries).values())


@pytest.mark.parametrize("penalty", ["frequency_penalty", "presence_penalty"])
def test_penalties_reduce_repeats(sampler, ref, penalty):
    base = dict(temperature=0, max_tokens=32, logprobs=True)
    plain = sampler.generate(ref, HI, params=SamplingParams(**base)).choices[0]
    penalised = sampler.generate(ref, HI, params=SamplingParams(**base, **{penalty: 2.0})).choices[0]
    assert most_repeats(plain.logprobs) > 2  # the random tiny model repeats itself when greedy
    assert most_repeats(penalised.logprobs) < most_repeats(plain.logprobs)


def test_a_negative_penalty_encourages_repeats(sampler, ref):
    base = dict(temperature=0, max_tokens=32, logprobs=True)
    plain = sampler.generate(ref, HI, params=SamplingParams(**base)).choices[0]
    looping = sampler.generate(ref, HI, params=SamplingParams(**base, frequency_penalty=-2.0)).choices[0]
    assert most_repeats(looping.logprobs) >= most_repeats(plain.logprobs)


@pytest.mark.parametrize("kwargs, param", [
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"²": 1}}, "logit_bias"),
    ({"logit_bias": {"-3": 1}}, "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": [1, 2]}, "logit_bias"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
])
def test_bad_values_name_the_param(kwargs, param):
    with pytest.raises(InvalidRequestError) as e:
        SamplingParams(**kwargs)
    assert e.value.param == param


def test_logit_bias_token_outside_the_vocabulary(sampler, ref):
    with pytest.raises(InvalidRequestError) as e:
        sampler.generate(ref, HI, params=SamplingParams(max_tokens=2, logit_bias={"10000000": 5}))
    assert e.value.param == "logit_bias" and "49152" in e.value.message


def test_token_bytes_rebuild_multibyte_text(tiny_tokenizer):
    ids = tiny_tokenizer.encode(" héllo € 日本")
    raw = b"".join(logits.token_bytes(tiny_tokenizer, i) for i in ids)
    assert raw.decode("utf-8") == " héllo € 日本"
    assert logits.token_bytes(tiny_tokenizer, tiny_tokenizer.eos_token_id) is None
