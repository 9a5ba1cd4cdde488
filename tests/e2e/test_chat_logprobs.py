"""logprobs, logit_bias and refused parameters through a real `modelmill serve` with the official
openai SDK (modelmill-tiny): what a migrating classifier that reads confidences would call."""

from __future__ import annotations

import math

import openai
import pytest

USER = [{"role": "user", "content": "Is this spam? yes or no"}]


def test_logprobs_with_the_sdk_in_completion_and_stream(client):
    kw = dict(model="modelmill-tiny", messages=USER, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    resp = client.chat.completions.create(**kw)
    content = resp.choices[0].logprobs.content
    assert "".join(t.token for t in content) == resp.choices[0].message.content
    confidence = math.exp(content[0].logprob)
    assert 0 < confidence <= 1 and content[0].top_logprobs[0].logprob >= content[0].top_logprobs[1].logprob
    assert bytes(content[0].bytes).decode("utf-8", "replace") == content[0].token

    stream = client.chat.completions.create(**kw, stream=True)
    streamed = [t for chunk in stream for c in chunk.choices if c.logprobs for t in c.logprobs.content or []]
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]


def test_logit_bias_and_a_refused_parameter_with_the_sdk(client):
    forced = client.chat.completions.create(model="modelmill-tiny", messages=USER, max_tokens=3,
                                            logit_bias={"260": 100})
    assert forced.choices[0].message.content == " the" * 3
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="modelmill-tiny", messages=USER, modalities=["text", "audio"],
                                       audio={"voice": "alloy", "format": "wav"})
    assert e.value.body["param"] in ("audio", "modalities")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="modelmill-tiny", messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is in the picture?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}])
    assert e.value.body["param"] == "messages[0].content[1]"
