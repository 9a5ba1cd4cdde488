"""Wire models for /v1/chat/completions: the request, the completion and its stream chunks."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from modelmill.service.schemas.common import OpenAIRequest, WireModel

# OpenAI's own bound on n; this deployment's (lower) one is Settings.max_chat_n (service/chat/params.py).
MAX_N = 128


class ChatMessage(OpenAIRequest):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    # OpenAI's, refused with a 400 naming them (service/chat/params.py): no audio, no legacy function_call.
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None
    # An earlier reply sent back as history carries its refusal (null here: ModelMill never refuses).
    refusal: str | None = None


class FunctionDef(OpenAIRequest):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(OpenAIRequest):
    # "custom" (free-form tools) is OpenAI's too: declared so it is refused by name
    # (service/chat/params.py), not as an unrecognized argument.
    type: Literal["function", "custom"] = "function"
    function: FunctionDef | None = None
    custom: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _function_tool_has_a_function(self):
        if self.type == "function" and self.function is None:
            raise ValueError("a function tool needs its `function` definition")
        return self


class StreamOptions(OpenAIRequest):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # only false is honoured (service/chat/params.py)


class ChatCompletionRequest(OpenAIRequest):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # torch's seed range
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], dict[str, Any], None] = None
    parallel_tool_calls: bool | None = None
    # text / json_object / json_schema: checked and enforced by ml/constraints.py (a bad one is a 400)
    response_format: dict[str, Any] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    # true: the request and completion are kept for the caller's project (service/chat/stored_completions.py)
    store: bool | None = None
    # Honoured per request inside a batch (ml/logits.py); limits in service/chat/params.py.
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    # The rest of OpenAI's CreateChatCompletionRequest: each is honoured where its value asks for
    # nothing ModelMill lacks, else refused with a 400 naming it (service/chat/params.py,
    # docs/api-parameters.md). Declared so that they are not "Unrecognized request argument"s.
    service_tier: str | None = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    moderation: dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: Union[str, dict[str, Any], None] = None
    safety_identifier: str | None = Field(default=None, max_length=64)
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None

    @field_validator("n", "stream", mode="before")
    @classmethod
    def _null_is_default(cls, v, info):
        """OpenAI's schema lets n and stream be null, meaning their defaults."""
        return ({"n": 1, "stream": False}[info.field_name]) if v is None else v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if isinstance(v, str):
            v = [v]
        if v is not None and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v or None

    def message_dicts(self) -> list[dict]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def tool_dicts(self) -> list[dict] | None:
        """The tools as OpenAI dicts (tool_choice "none" is honoured by the sampler)."""
        return [t.model_dump(exclude_none=True) for t in self.tools] if self.tools else None


# -- responses -------------------------------------------------------------------------


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ToolCallFunction(WireModel):
    name: str
    arguments: str


class ToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ResponseMessage(WireModel):
    omit_if_none = frozenset({"tool_calls"})

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(WireModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(WireModel):
    """OpenAI's ChatCompletionTokenLogprob (which distribution: ml/logits.py)."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(WireModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None  # ModelMill never refuses


class Choice(WireModel):
    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None  # set when the request asked for logprobs
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str


class ToolCallChunkFunction(WireModel):
    omit_if_none = frozenset({"name", "arguments"})

    name: str | None = None
    arguments: str | None = None


class ToolCallChunk(WireModel):
    omit_if_none = frozenset({"id", "type", "function"})

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallChunkFunction | None = None


class Delta(WireModel):
    omit_if_none = frozenset({"role", "content", "tool_calls"})

    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallChunk] | None = None


class ChunkChoice(WireModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None  # the tokens of this chunk's text, when logprobs were asked for
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionChunk(WireModel):
    """One SSE chunk. With stream_options.include_usage every chunk carries `usage` (null
    except on the last one, whose `choices` is empty), as OpenAI does."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
