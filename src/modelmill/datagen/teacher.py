"""A teacher model behind any OpenAI-compatible endpoint: retried, counted, cached.

    teacher = Teacher(client, "ft:gpt-4o-mini:acme::abc", cache=ResponseCache(path))
    reply = teacher.complete({"messages": [...], "tools": [...], "n": 4})   # a ChatCompletion dict

Why our own retry loop instead of the SDK's `max_retries`: the SDK retries silently, and the issue
asks that every retry be counted and reported (and that a teacher answering 200 with a body that
is not a chat completion be retried too). The SDK client is built with max_retries=0.

The cache is an append-only JSONL file keyed by a hash of the request body: a rerun after an
interruption finds every answered request there and never sends it again. A line cut short by
the interruption is ignored on reading.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

RETRY_ERRORS = {  # SDK exception -> the name it is counted under
    openai.RateLimitError: "rate_limit",
    openai.APITimeoutError: "timeout",
    openai.APIConnectionError: "connection",
    openai.InternalServerError: "server_error",
    openai.APIResponseValidationError: "invalid_response",
}


class TeacherError(RuntimeError):
    """The teacher did not answer one request after every retry (or refused it outright)."""


class InvalidReply(ValueError):
    """A 200 whose body is not a usable chat completion."""


def make_client(base_url: str | None, api_key: str | None, timeout: float = 60.0) -> openai.OpenAI:
    """The SDK client for a teacher (OpenAI itself when base_url is None)."""
    return openai.OpenAI(base_url=base_url, api_key=api_key or "local", timeout=timeout, max_retries=0)


class ResponseCache:
    """request key -> response dict, persisted one JSON line per answer (thread-safe)."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        if self.path and self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                        self._data[row["key"]] = row["response"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short when the last run was interrupted

    @staticmethod
    def key(body: dict) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        return self._data.get(key)

    def put(self, key: str, response: dict) -> None:
        with self._lock:
            self._data[key] = response
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n")


@dataclass
class Usage:
    """What the teacher cost this run (cached answers cost nothing and are counted apart)."""

    requests: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: Counter = field(default_factory=Counter)  # reason -> retries
    failures: int = 0

    def summary(self) -> str:
        retries = ", ".join(f"{n} {why}" for why, n in sorted(self.retries.items())) or "none"
        return (f"teacher: {self.requests} requests ({self.cached} answered from cache), "
                f"{self.prompt_tokens} prompt + {self.completion_tokens} completion tokens; "
                f"retries: {retries}; failed requests: {self.failures}")


class Teacher:
    """Chat completions from `model` through `client`, with retries, a cache and usage."""

    def __init__(self, client: openai.OpenAI, model: str, *, cache: ResponseCache | None = None,
                 max_attempts: int = 5, backoff: float = 1.0, max_backoff: float = 30.0):
        self.client = client
        self.model = model
        self.cache = cache or ResponseCache(None)
        self.max_attempts = max_attempts  # tries per request, the first one included
        self.backoff = backoff  # seconds before the first retry; doubles each time, with jitter
        self.max_backoff = max_backoff
        self.usage = Usage()
        self._lock = threading.Lock()

    def complete(self, body: dict) -> dict:
        """The teacher's ChatCompletion (as a dict) for `body` (the request minus `model`)."""
        body = {"model": self.model, **body}
        key = ResponseCache.key(body)
        cached = self.cache.get(key)
        if cached is not None:
            with self._lock:
                self.usage.cached += 1
            return cached
        last = ""
        for attempt in range(self.max_attempts):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * (0.5 + random.random()))
            try:
                with self._lock:
                    self.usage.requests += 1
                reply = self._send(body)
            except tuple(RETRY_ERRORS) + (ValueError,) as e:  # ValueError: a body that is not JSON
                reason = _reason(e) if isinstance(e, tuple(RETRY_ERRORS)) else "invalid_response"
                last = f"{reason}: {_short(e)}"
                if attempt + 1 < self.max_attempts:
                    with self._lock:
                        self.usage.retries[reason] += 1
                continue
            except openai.APIStatusError as e:  # 400/401/403/404: retrying would not help
                with self._lock:
                    self.usage.failures += 1
                raise TeacherError(f"the teacher refused the request ({e.status_code}): {_short(e)}") from None
            usage = reply.get("usage") or {}
            with self._lock:
                self.usage.prompt_tokens += usage.get("prompt_tokens") or 0
                self.usage.completion_tokens += usage.get("completion_tokens") or 0
            self.cache.put(key, reply)
            return reply
        with self._lock:
            self.usage.failures += 1
        raise TeacherError(f"no answer after {self.max_attempts} tries; last error {last}")

    def _send(self, body: dict) -> dict:
        completion = self.client.chat.completions.create(**body)
        if isinstance(completion, str) or not getattr(completion, "choices", None):
            raise InvalidReply(f"not a chat completion: {str(completion)[:80]!r}")
        return completion.model_dump(exclude_none=True)


def _reason(e: Exception) -> str:
    for cls, name in RETRY_ERRORS.items():
        if isinstance(e, cls):
            return name
    return type(e).__name__


def _short(e: Exception, limit: int = 200) -> str:
    text = getattr(e, "message", None) or str(e)
    return text if len(text) <= limit else text[:limit] + "..."


def assistant_message(choice: dict) -> dict:
    """A chat completion choice -> an SFT assistant message (content and/or tool_calls)."""
    message = choice.get("message") or {}
    out: dict[str, Any] = {"role": "assistant"}
    calls = message.get("tool_calls") or []
    if calls:
        out["tool_calls"] = [{"id": c.get("id") or f"call_{i}", "type": "function",
                              "function": {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}}
                             for i, c in enumerate(calls)]
    if message.get("content") or not calls:
        out["content"] = message.get("content") or ""
    return out
