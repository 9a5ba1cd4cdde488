"""Nothing silently ignored on /v1/chat/completions: every OpenAI request parameter that
ModelMill does not honour, or honours only for some values, is refused here with a 400 whose
`param` names it (docs/api-parameters.md has the whole table).

schemas/chat.py declares every field of OpenAI's CreateChatCompletionRequest, so a known
OpenAI parameter is never an "Unrecognized request argument"; this module decides which of
their values are refused, and applies this deployment's limits on `n` and `top_logprobs`
(Settings.max_chat_n / max_top_logprobs). The max_tokens limits are service/chat/completions.py's
check_token_limits. Everything here runs before the request is queued or a stream starts.
"""

from __future__ import annotations

from typing import Any

from modelmill.errors import InvalidRequestError
from modelmill.service.schemas.chat import ChatCompletionRequest
from modelmill.settings import Settings

# Parameters whose every non-null value is refused, with why (the models ModelMill serves are
# text-in, text-out causal LMs without tools of their own or a reasoning mode).
UNSUPPORTED = {
    "audio": "audio output is not supported: ModelMill's models generate text only",
    "prediction": "Predicted Outputs are not supported",
    "web_search_options": "web search is not supported: ModelMill has no built-in tools",
    "moderation": "moderation is not supported",
    "verbosity": "verbosity is not supported: ModelMill's models have no verbosity control",
    "prompt_cache_options": "prompt_cache_options is not supported: ModelMill has no prompt cache to configure",
    "functions": "functions is deprecated and not supported; send the same definitions as "
                 "tools=[{\"type\": \"function\", \"function\": ...}]",
    "function_call": "function_call is deprecated and not supported; use tool_choice",
}
# Parameters with values that ask for nothing ModelMill lacks (accepted) and others (refused).
ACCEPTED_VALUES = {
    "service_tier": ({"auto", "default"}, "ModelMill serves every request at one service tier"),
    "reasoning_effort": ({"none"}, "the models ModelMill serves are not reasoning models"),
    "prompt_cache_retention": ({"in_memory"}, "ModelMill keeps no prompt cache"),
}
TEXT_ONLY_PARTS = {"image_url": "image", "input_audio": "audio", "file": "file"}


def check(req: ChatCompletionRequest, settings: Settings, *, images_later: bool = False) -> None:
    """Raise InvalidRequestError (param named) for anything in `req` ModelMill would not honour.
    images_later: image_url parts are left to check_images (once the model is known: a VLM reads them)."""
    for name, why in UNSUPPORTED.items():
        if getattr(req, name) is not None:
            raise InvalidRequestError(f"{name}: {why}", param=name, code="unsupported_parameter")
    for name, (accepted, why) in ACCEPTED_VALUES.items():
        value = getattr(req, name)
        if value is not None and value not in accepted:
            raise InvalidRequestError(f"{name} {value!r} is not supported ({why}); accepted: {sorted(accepted)}",
                                      param=name, code="unsupported_value")
    if req.modalities is not None and list(req.modalities) != ["text"]:
        raise InvalidRequestError(f"modalities {req.modalities!r} is not supported: ModelMill's models generate "
                                  "text only (send [\"text\"] or leave it out)", param="modalities",
                                  code="unsupported_value")
    if req.stream_options is not None and not req.stream:  # OpenAI's own answer: it would change nothing
        raise InvalidRequestError("The 'stream_options' parameter is only allowed when 'stream' is enabled",
                                  param="stream_options", code="invalid_value")
    if req.stream_options is not None and req.stream_options.include_obfuscation:
        raise InvalidRequestError("stream_options.include_obfuscation true is not supported: ModelMill does not pad "
                                  "stream events", param="stream_options.include_obfuscation",
                                  code="unsupported_value")
    for i, tool in enumerate(req.tools or []):
        if tool.type != "function":
            raise InvalidRequestError(f"tools[{i}] is a {tool.type} tool; ModelMill supports function tools only",
                                      param=f"tools[{i}].type", code="unsupported_value")
    _check_limits(req, settings)
    _check_messages(req, images_later)


def _check_limits(req: ChatCompletionRequest, settings: Settings) -> None:
    if req.n > settings.max_chat_n:
        raise InvalidRequestError(f"n is {req.n}; this server allows at most {settings.max_chat_n} choices per "
                                  "request (MODELMILL_MAX_CHAT_N)", param="n", code="limit_exceeded")
    if req.top_logprobs is not None and req.top_logprobs > settings.max_top_logprobs:
        raise InvalidRequestError(f"top_logprobs is {req.top_logprobs}; this server allows at most "
                                  f"{settings.max_top_logprobs} (MODELMILL_MAX_TOP_LOGPROBS)", param="top_logprobs",
                                  code="limit_exceeded")


def _check_messages(req: ChatCompletionRequest, images_later: bool = False) -> None:
    """Every content part must be text (ModelMill's models are text-only), and no message may
    carry OpenAI's audio or legacy function_call fields."""
    for i, message in enumerate(req.messages):
        for field in ("audio", "function_call"):
            if getattr(message, field) is not None:
                raise InvalidRequestError(f"messages[{i}].{field} is not supported (use tool_calls for calls; "
                                          "ModelMill's models have no audio)", param=f"messages[{i}].{field}",
                                          code="unsupported_parameter")
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if not (images_later and isinstance(part, dict) and part.get("type") == "image_url"):
                    _check_part(req.model, i, j, part)


def _check_part(model: str, i: int, j: int, part: Any) -> None:
    param = f"messages[{i}].content[{j}]"
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in TEXT_ONLY_PARTS:
        raise InvalidRequestError(f"{param} is an {kind} part, but {model} is a text-only model: it cannot read "
                                  f"{TEXT_ONLY_PARTS[kind]} input. Send text parts only.", param=param,
                                  code="unsupported_content")
    if kind != "text" or not isinstance(part.get("text"), str):
        raise InvalidRequestError(f"{param} must be a text part ({{\"type\": \"text\", \"text\": \"...\"}}); "
                                  f"got type {kind!r}", param=param, code="invalid_value")


def check_images(settings: Settings, served, req: ChatCompletionRequest) -> None:
    """Image parts (blocking: may fetch an allow-listed URL): the text-only 400 of _check_part for a model
    that cannot read images; for a vision-language model (ml/vision.py) each image must be a user
    message's, load within the limits, and at most vision.MAX_IMAGES_PER_EXAMPLE per request."""
    from modelmill.ml import vision

    parts = [(i, j, message.role, part) for i, message in enumerate(req.messages) if isinstance(message.content, list)
             for j, part in enumerate(message.content) if isinstance(part, dict) and part.get("type") == "image_url"]
    if not parts:
        return
    if not vision.is_vision_base(settings.home, served.base_model):
        _check_part(req.model, *parts[0][:2], parts[0][3])
    if len(parts) > vision.MAX_IMAGES_PER_EXAMPLE:
        raise InvalidRequestError(f"{len(parts)} images in one request; at most {vision.MAX_IMAGES_PER_EXAMPLE} are "
                                  "allowed", param="messages", code="too_many_images")
    policy = vision.ImagePolicy(hosts=settings.image_hosts)
    for i, j, role, part in parts:
        param = f"messages[{i}].content[{j}]"
        problems: list[tuple[str, str, str]] = []
        if role != "user":
            problems.append((f"{param}.type", "unsupported_content", f"image parts are only allowed in user "
                                                                      f"messages, not {role}"))
        else:
            vision.check_image_part(part, param, lambda *p: problems.append(p), policy)
        if problems:
            field, code, message = problems[0]
            raise InvalidRequestError(f"{field}: {message}", param=field, code=code)


def check_logit_bias(sampler, settings: Settings, served, req: ChatCompletionRequest) -> None:
    """Every logit_bias key is one of the model's token ids (blocking: loads the model's tokenizer
    through the sampler's cache). Run before a stream starts, so a bad id is a 400, not an error
    event; the sampler checks again for callers that skip this."""
    if not req.logit_bias:
        return
    from modelmill.ml import logits
    from modelmill.service.models import registry as model_registry

    bias = logits.parse_bias(req.logit_bias)  # keys and values checked, keys as ints
    _, tokenizer = sampler.load(model_registry.model_ref(settings, served))
    logits.check_bias_ids(bias, tokenizer)
