"""Concurrent chat completions through the official openai SDK against a live server.

The server batches requests that arrive together (ml/batching.py; tests/ml/test_sampling_batching.py
proves the batching itself). Here: 8 concurrent requests all get valid, spec-conforming answers,
the same answers as when sent one after another, and a bad request among them fails alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.spec_check import assert_matches

QUESTIONS = ["hi", "Turn on the kitchen lights", "What is two plus two?", "Lock the front door",
             "Set the office to 21 degrees", "Tell me a joke", "What time is it?", "bye"]


def ask(client, question: str, **kw) -> dict:
    raw = client.chat.completions.with_raw_response.create(
        model="modelmill-tiny", messages=[{"role": "user", "content": question}],
        temperature=kw.pop("temperature", 0), max_tokens=kw.pop("max_tokens", 8), **kw)
    return raw.http_response.json()


def test_eight_concurrent_chat_completions(client):
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda q: ask(client, q), QUESTIONS))
    assert len(answers) == 8 and len({a["id"] for a in answers}) == 8
    for answer in answers:
        assert_matches(answer, "CreateChatCompletionResponse")
        (choice,) = answer["choices"]
        assert choice["finish_reason"] in ("stop", "length") and choice["message"]["role"] == "assistant"
        usage = answer["usage"]
        assert 1 <= usage["completion_tokens"] <= 8
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    for question, answer in zip(QUESTIONS, answers):  # batching does not change a greedy answer
        alone = ask(client, question)
        assert alone["choices"][0]["message"]["content"] == answer["choices"][0]["message"]["content"]
        assert alone["usage"] == answer["usage"]


def test_concurrent_mix_with_a_stream_and_a_bad_request(client):
    def stream(question: str) -> list:
        return list(client.chat.completions.create(
            model="modelmill-tiny", messages=[{"role": "user", "content": question}], temperature=0, max_tokens=8,
            stream=True, stream_options={"include_usage": True}))

    def too_long() -> Exception | None:
        try:
            ask(client, "word " * 9000)
        except openai.BadRequestError as e:
            return e
        return None

    with ThreadPoolExecutor(8) as pool:
        plain = [pool.submit(ask, client, q, n=2, seed=3, max_tokens=6, temperature=1) if i == 0
                 else pool.submit(ask, client, q) for i, q in enumerate(QUESTIONS[:5])]
        streamed = [pool.submit(stream, q) for q in QUESTIONS[5:7]]
        bad = pool.submit(too_long)
        plain, streamed, bad = [f.result() for f in plain], [f.result() for f in streamed], bad.result()
    assert bad is not None and bad.status_code == 400
    assert bad.body["code"] == "context_length_exceeded" and bad.body["param"] == "messages"
    for answer in plain:
        assert_matches(answer, "CreateChatCompletionResponse")
    assert len(plain[0]["choices"]) == 2 and plain[0]["usage"]["completion_tokens"] <= 12
    for question, chunks in zip(QUESTIONS[5:7], streamed):
        for chunk in chunks:
            assert_matches(chunk.to_dict(), "CreateChatCompletionStreamResponse")
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        alone = ask(client, question)
        assert text == alone["choices"][0]["message"]["content"]
        assert chunks[-1].usage.completion_tokens == alone["usage"]["completion_tokens"]


@pytest.mark.parametrize("body", [{"max_tokens": 0}, {"temperature": 5}, {"n": 0}])
def test_bad_parameters_are_400_while_others_run(client, body):
    with ThreadPoolExecutor(3) as pool:
        good = [pool.submit(ask, client, q) for q in QUESTIONS[:2]]
        with pytest.raises(openai.BadRequestError):
            ask(client, "hi", **body)
        assert all(f.result()["choices"][0]["finish_reason"] in ("stop", "length") for f in good)
