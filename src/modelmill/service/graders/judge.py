"""The service's grader Judge: who answers a score_model / label_model grader's prompts.

A grader names its judge by model name. ServiceJudge routes that name, in this order:
1. an exact entry in settings.judges (MODELMILL_JUDGES) -> that OpenAI-compatible endpoint;
2. a model ModelMill serves (base, ft:, checkpoint; model_registry.resolve, as chat does, so only
   models the judge's project may use) -> the app's shared ml.sampling.Sampler, all conversations
   in one batch_generate call;
3. the "*" entry of settings.judges, if any -> that endpoint;
otherwise every reply is an error. A failure never raises: it becomes JudgeReply(error=...),
which the engine reports as model_grader_server_error with the details.

sampling_params are OpenAI's grader sampling params: temperature, top_p, seed and
max_completions_tokens are honoured by both routes; reasoning_effort is forwarded to external
endpoints and ignored by local models (they do not reason).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from modelmill.ml.graders import JudgeReply
from modelmill.settings import JudgeEndpoint, Settings
from modelmill.service.models import registry as model_registry
from modelmill.service.store import Store

log = logging.getLogger(__name__)

# Conversations sent to one local batch_generate call (bounds padding memory on long batches).
LOCAL_BATCH = 16
# Concurrent requests to one external endpoint.
EXTERNAL_CONCURRENCY = 8
# Retries of a failed external request (429 / 5xx / connection errors), on top of the first try.
EXTERNAL_RETRIES = 1
# Content part types that carry text, in OpenAI's eval-item and chat shapes.
TEXT_PARTS = ("input_text", "output_text", "text")


class ServiceJudge:
    """Implements ml.graders' Judge protocol for the service (see the module docstring)."""

    def __init__(self, settings: Settings, store: Store, get_sampler: Callable[[], Any], *,
                 project_id: str | None = None):
        self.settings = settings
        self.store = store
        self.get_sampler = get_sampler  # the app's shared Sampler, created on first use
        self.project_id = project_id  # whose models it may use (own + shared); None: every model
        self._clients: dict[tuple, Any] = {}  # (endpoint, api key) -> openai.OpenAI
        self._lock = threading.Lock()

    def complete_batch(self, model: str, conversations: list[list[dict]],
                       sampling_params: dict | None) -> list[JudgeReply]:
        if not conversations:
            return []
        params = dict(sampling_params or {})
        try:
            endpoint = self.settings.judges.get(model)
            if endpoint is None:
                served = self._served(model)
                if served is not None:
                    return self._local(served, conversations, params)
                endpoint = self.settings.judges.get("*")
            if endpoint is None:
                return _all_failed(conversations, f"The judge model '{model}' is not served by ModelMill and no "
                                                  "endpoint is configured for it (MODELMILL_JUDGES)")
            return self._external(endpoint, model, conversations, params)
        except Exception as e:  # noqa: BLE001 - a judge failure is a grader error, never a crash
            log.warning("judge %s failed: %s", model, e)
            return _all_failed(conversations, f"{type(e).__name__}: {e}")

    # -- ModelMill's own models --------------------------------------------------------------

    def _served(self, model: str):
        from modelmill import errors

        try:
            return model_registry.resolve(self.store, self.settings, model, project_id=self.project_id)
        except errors.NotFoundError:
            return None

    def _local(self, served, conversations: list[list[dict]], params: dict) -> list[JudgeReply]:
        from modelmill.ml.sampling import SamplingParams

        sp = SamplingParams(temperature=_or(params.get("temperature"), 1.0), top_p=_or(params.get("top_p"), 1.0),
                            max_tokens=params.get("max_completions_tokens"), seed=params.get("seed"))
        ref = model_registry.model_ref(self.settings, served)
        sampler = self.get_sampler()
        replies: list[JudgeReply] = []
        for start in range(0, len(conversations), LOCAL_BATCH):
            chunk = [_local_messages(c) for c in conversations[start:start + LOCAL_BATCH]]
            for result in sampler.batch_generate(ref, chunk, sp):
                replies.append(JudgeReply(text=result.choices[0].text, prompt_tokens=result.prompt_tokens,
                                          completion_tokens=result.completion_tokens, error=None))
        return replies

    # -- external OpenAI-compatible endpoints ------------------------------------------------------

    def _external(self, endpoint: JudgeEndpoint, model: str, conversations: list[list[dict]],
                  params: dict) -> list[JudgeReply]:
        client = self._client(endpoint)
        kwargs = {k: v for k, v in {
            "temperature": params.get("temperature"), "top_p": params.get("top_p"), "seed": params.get("seed"),
            "max_completion_tokens": params.get("max_completions_tokens"),
            "reasoning_effort": params.get("reasoning_effort")}.items() if v is not None}
        upstream = endpoint.model or model

        def one(conv: list[dict]) -> JudgeReply:
            try:
                r = client.chat.completions.create(model=upstream, messages=_external_messages(conv), **kwargs)
                msg = r.choices[0].message
                usage = r.usage
                prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
                if getattr(msg, "refusal", None) and not msg.content:
                    return _reply("", prompt, completion, None, refusal=True)
                return _reply(msg.content or "", prompt, completion, None)
            except Exception as e:  # noqa: BLE001 - reported per conversation
                return _reply("", 0, 0, f"{type(e).__name__}: {e}")

        if len(conversations) == 1:
            return [one(conversations[0])]
        with ThreadPoolExecutor(max_workers=min(EXTERNAL_CONCURRENCY, len(conversations))) as pool:
            return list(pool.map(one, conversations))

    def _client(self, endpoint: JudgeEndpoint):
        from openai import OpenAI

        api_key = endpoint.resolved_api_key()  # read per call: a rotated key gets a fresh client
        key = (endpoint, api_key)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                # An empty key still needs a placeholder: the SDK refuses to start without one.
                client = OpenAI(base_url=endpoint.base_url, api_key=api_key or "unused",
                                timeout=endpoint.timeout_s, max_retries=EXTERNAL_RETRIES)
                self._clients[key] = client
            return client


def judge_available(settings: Settings, store: Store, model: str, *, project_id: str | None) -> bool:
    """Whether ServiceJudge could route `model` (same order as complete_batch): a MODELMILL_JUDGES
    entry (or its "*" fallback), or a model the project may use. Checked when a grader is accepted,
    so an unknown judge is the caller's 400 at once, not a failure on every item later."""
    from modelmill import errors

    if model in settings.judges or "*" in settings.judges:
        return True
    try:
        model_registry.resolve(store, settings, model, project_id=project_id)
    except errors.NotFoundError:
        return False
    return True


def _or(value, default):
    return default if value is None else value


def _reply(text: str, prompt: int, completion: int, error: str | None, *, refusal: bool = False) -> JudgeReply:
    return JudgeReply(text=text, prompt_tokens=int(prompt or 0), completion_tokens=int(completion or 0),
                      error=error, refusal=refusal)


def _all_failed(conversations: list, error: str) -> list[JudgeReply]:
    return [JudgeReply(text="", prompt_tokens=0, completion_tokens=0, error=error) for _ in conversations]


def _parts_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):  # EvalItem allows one content object as well as a list
        content = [content]
    return "".join(p if isinstance(p, str) else p.get("text", "") for p in content
                   if isinstance(p, str) or (isinstance(p, dict) and p.get("type") in TEXT_PARTS))


def _local_messages(conv: list[dict]) -> list[dict]:
    """Eval-item messages -> plain chat messages for ml.sampling (text parts only: local models
    read text; images and audio are dropped). chat_format maps developer to system."""
    return [{"role": m.get("role", "user"), "content": _parts_text(m.get("content"))} for m in conv]


def _external_messages(conv: list[dict]) -> list[dict]:
    """Eval-item messages -> Chat Completions messages: text parts become "text" parts, input
    images become "image_url" parts (audio is dropped); a text-only message is sent as one string."""
    out = []
    for m in conv:
        content = m.get("content")
        if isinstance(content, dict):
            content = [content]
        if isinstance(content, list):
            parts = []
            for p in content:
                if isinstance(p, str):
                    parts.append({"type": "text", "text": p})
                elif not isinstance(p, dict):
                    continue
                elif p.get("type") in TEXT_PARTS:
                    parts.append({"type": "text", "text": p.get("text", "")})
                elif p.get("type") == "input_image" and p.get("image_url"):
                    parts.append({"type": "image_url", "image_url": {"url": p["image_url"],
                                                                     "detail": p.get("detail") or "auto"}})
            content = parts[0]["text"] if len(parts) == 1 and parts[0]["type"] == "text" else parts
        out.append({"role": m.get("role", "user"), "content": content if content is not None else ""})
    return out
