"""The service judge routes a grader's model name: ModelMill's own models to the shared
Sampler, configured names to their OpenAI-compatible endpoint (a fake one on a free port
here), anything else to an error reply. Also MODELMILL_JUDGES parsing."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from modelmill.local_server import free_port
from modelmill.ml.sampling import Choice, GenerationResult
from modelmill.ml.types import ModelRef
from modelmill.service.models import registry as model_registry
from modelmill.service.api.app import create_app
from modelmill.service.graders.judge import ServiceJudge
from modelmill.settings import JudgeEndpoint, Settings, parse_judges
from tests.spec_check import assert_matches

CONV = [{"role": "system", "content": [{"type": "input_text", "text": "Score 0 to 1."}]},
        {"role": "user", "content": "answer: 4"}]


class FakeOpenAI:
    """A minimal OpenAI-compatible /v1/chat/completions on 127.0.0.1 that records each request."""

    def __init__(self, reply: str = "0.75", delay_s: float = 0.0):
        self.requests: list[dict] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def completions(request: Request):
            body = await request.json()
            self.requests.append({"body": body, "authorization": request.headers.get("authorization")})
            if body["messages"][-1]["content"] == "slow":
                await asyncio.sleep(delay_s)
            return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": reply}}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 2, "total_tokens": 13}}

        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    timeout_graceful_shutdown=0.1))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "fake endpoint did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


class StubSampler:
    """Stands in for ml.sampling.Sampler: answers every conversation with "1.0" and records calls."""

    def __init__(self):
        self.calls = []

    def batch_generate(self, ref, conversations, params=None, **kw):
        self.calls.append((ref, conversations, params))
        return [GenerationResult([Choice(0, "1.0", "1.0", [], "stop", 3)], 20, 3) for _ in conversations]


@pytest.fixture(scope="module")
def fake():
    f = FakeOpenAI(delay_s=3.0)
    yield f
    f.stop()


@pytest.fixture
def judge_settings(settings, fake, monkeypatch):
    monkeypatch.setenv("FAKE_JUDGE_KEY", "sk-fake-123")
    return settings.with_(judges={
        "gpt-fake": JudgeEndpoint(base_url=fake.base_url, api_key_env="FAKE_JUDGE_KEY"),
        "gpt-renamed": JudgeEndpoint(base_url=fake.base_url, api_key="inline-key", model="upstream-name",
                                     timeout_s=0.5)})


def test_routes_by_model_name(judge_settings, store, fake, monkeypatch):
    # The stub sampler needs no weights: skip building modelmill-tiny (the API test builds it).
    monkeypatch.setattr(model_registry, "model_ref", lambda settings, served: ModelRef(Path("/nowhere"), None))
    sampler = StubSampler()
    judge = ServiceJudge(judge_settings, store, lambda: sampler)
    fake.requests.clear()

    external = judge.complete_batch("gpt-fake", [CONV, CONV], {"temperature": 0.2, "seed": 7, "top_p": 0.9,
                                                               "max_completions_tokens": 16})
    assert [(r.text, r.prompt_tokens, r.completion_tokens, r.error) for r in external] == [("0.75", 11, 2, None)] * 2
    assert not sampler.calls
    sent = fake.requests[0]
    assert sent["authorization"] == "Bearer sk-fake-123"
    assert sent["body"]["model"] == "gpt-fake"
    assert {k: sent["body"][k] for k in ("temperature", "seed", "top_p", "max_completion_tokens")} == {
        "temperature": 0.2, "seed": 7, "top_p": 0.9, "max_completion_tokens": 16}
    assert sent["body"]["messages"][0] == {"role": "system", "content": "Score 0 to 1."}

    local = judge.complete_batch("modelmill-tiny", [CONV], {"temperature": 0, "max_completions_tokens": 4,
                                                            "reasoning_effort": "high"})
    assert [(r.text, r.error) for r in local] == [("1.0", None)]
    assert len(fake.requests) == 2  # nothing more went out
    ref, conversations, params = sampler.calls[0]
    assert ref.adapter_dir is None and params.temperature == 0 and params.max_tokens == 4
    assert conversations[0][0] == {"role": "system", "content": "Score 0 to 1."}

    renamed = judge.complete_batch("gpt-renamed", [CONV], {})
    assert renamed[0].error is None and fake.requests[-1]["body"]["model"] == "upstream-name"
    assert fake.requests[-1]["authorization"] == "Bearer inline-key"

    unknown = judge.complete_batch("gpt-nowhere", [CONV], {})
    assert unknown[0].error and "MODELMILL_JUDGES" in unknown[0].error


def test_fallback_entry_and_timeout_become_errors(settings, store, fake):
    wildcard = settings.with_(judges={"*": JudgeEndpoint(base_url=fake.base_url, timeout_s=0.2)})
    judge = ServiceJudge(wildcard, store, StubSampler)
    assert judge.complete_batch("anything", [CONV], {})[0].text == "0.75"
    start = time.monotonic()
    slow = judge.complete_batch("anything", [[{"role": "user", "content": "slow"}]], {})
    assert slow[0].error and "Timeout" in slow[0].error
    assert time.monotonic() - start < 2.0  # two tries of 0.2 s plus the SDK's retry pause, not the 3 s reply

    dead = settings.with_(judges={"gpt-dead": JudgeEndpoint(base_url=f"http://127.0.0.1:{free_port()}/v1")})
    reply = ServiceJudge(dead, store, StubSampler).complete_batch("gpt-dead", [CONV], {})[0]
    assert reply.error and "Connection" in reply.error


def test_score_model_through_the_api_uses_the_external_judge(judge_settings, store, fake):
    grader = {"type": "score_model", "name": "judge", "model": "gpt-fake", "range": [0, 1],
              "input": [{"role": "user", "content": "Score {{sample.output_text}} against {{item.answer}}"}]}
    fake.requests.clear()
    with TestClient(create_app(judge_settings, store=store)) as client:
        r = client.post("/v1/fine_tuning/alpha/graders/run",
                        json={"grader": grader, "model_sample": "4", "item": {"answer": "4"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert_matches(body, "RunGraderResponse")
    assert body["reward"] == pytest.approx(0.75)
    assert not any(v for k, v in body["metadata"]["errors"].items() if isinstance(v, bool))
    assert body["metadata"]["token_usage"] == 13
    assert "gpt-fake" in body["model_grader_token_usage_per_model"]
    assert fake.requests[0]["body"]["messages"][-1]["content"] == "Score 4 against 4"


def test_parse_judges():
    table = parse_judges('{"gpt-4o-mini": ["https://api.openai.com/v1", "OPENAI_API_KEY"],'
                         ' "*": {"base_url": "http://127.0.0.1:9000/v1", "model": "qwen", "timeout_s": 5}}')
    assert table["gpt-4o-mini"] == JudgeEndpoint("https://api.openai.com/v1", api_key_env="OPENAI_API_KEY")
    assert table["*"].model == "qwen" and table["*"].timeout_s == 5
    assert parse_judges("") == {} and parse_judges(None) == {}
    for bad in ("[1]", "{not json", '{"m": "http://x"}', '{"m": {"base_url": "http://x", "key": "k"}}'):
        with pytest.raises(ValueError, match="MODELMILL_JUDGES"):
            parse_judges(bad)


def test_settings_from_env_reads_judges(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELMILL_JUDGES", '{"m": ["http://127.0.0.1:1/v1", "K"]}')
    assert Settings.from_env(home=tmp_path).judges["m"].api_key_env == "K"
