"""Fixtures for grader tests: a private MODELMILL_HOME (WordNet's LF copy is cached under it)
and a scriptable fake Judge."""

from __future__ import annotations

import threading

import pytest

from modelmill.ml.graders import JudgeReply


@pytest.fixture(scope="session", autouse=True)
def graders_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("graders-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELMILL_HOME", str(home))
        yield home


class FakeJudge:
    """Answers each conversation with reply_for(conversation) (a str, or a JudgeReply) and records
    every call. Token counts: prompt = characters of the rendered prompt, completion = 3."""

    def __init__(self, reply_for=None, *, raises: Exception | None = None):
        self.reply_for = reply_for or (lambda conversation: "1")
        self.raises = raises
        self.calls: list[tuple[str, list, dict]] = []
        self._lock = threading.Lock()

    def complete_batch(self, model, conversations, sampling_params):
        with self._lock:
            self.calls.append((model, conversations, sampling_params))
        if self.raises is not None:
            raise self.raises
        replies = []
        for conversation in conversations:
            reply = self.reply_for(conversation)
            if isinstance(reply, str):
                reply = JudgeReply(text=reply, prompt_tokens=len(prompt_text(conversation)), completion_tokens=3)
            replies.append(reply)
        return replies


def prompt_text(conversation: list[dict]) -> str:
    """All text of a rendered conversation (string content or text parts)."""
    out = []
    for message in conversation:
        content = message["content"]
        parts = content if isinstance(content, list) else [content]
        for part in parts:
            out.append(part if isinstance(part, str) else part.get("text", ""))
    return "\n".join(out)


@pytest.fixture
def fake_judge():
    return FakeJudge


@pytest.fixture(autouse=True)
def every_result_matches_openai_schema(monkeypatch):
    """Whatever a test grades, each result's wire form must match OpenAI's RunGraderResponse."""
    from modelmill.ml.graders import engine
    from tests.spec_check import assert_matches

    original = engine.run_grader

    def checked(*args, **kwargs):
        results = original(*args, **kwargs)
        for result in results:
            assert_matches(result.to_run_grader_response(), "RunGraderResponse")
        return results

    monkeypatch.setattr(engine, "run_grader", checked)
