"""Text generation for chat completions, evals and RFT rollouts.

One Sampler holds an LRU cache of loaded base models, each with its LoRA adapters loaded by name
(ml/multi_lora.py), so the second request for a model does not reload it and concurrent
requests for different fine-tuned models of one base decode in one batch. Where the tokens come
from is the inference backend: this process's transformers models (the default), or a vLLM
server (ml/vllm_backend.py, chosen with MODELMILL_INFERENCE_BACKEND); everything on this page
(rendering, budgets, stop strings, tool parsing, usage) is the same code for both. Prompts are rendered with the tokenizer's chat
template through chat_format.render, exactly as training renders them, and generated tool calls
are parsed back with the parser of the model's chat family (chat_families: `<tool_call>` blocks,
Llama 3 JSON calls or Mistral's [TOOL_CALLS]).

Semantics (OpenAI's, where they map):
- temperature 0 (or top_p 0) is greedy decoding; n > 1 greedy choices are one decode copied n
  times (they would be identical anyway).
- seed makes sampling deterministic: each request draws from its own torch.Generator seeded with
  its seed (a request without one gets a seed drawn from the global torch RNG), never from the
  global RNG, so a training run in the same process is not disturbed and a seeded request gives
  the same tokens whether it was decoded alone or batched with others.
- Concurrent requests are batched (ml/batching.py): calls that arrive while the model is busy,
  or within a few ms of each other, are decoded together in one left-padded generate() and each
  caller gets its own rows back, as soon as they are done. Every rule on this page holds per
  request inside a batch (own budget, stop strings, seed, temperature / top_p, tool-call prefill
  and parsing, usage); requests for the same base share a batch whatever their adapters. Generation
  in the process still runs one generate() at a time (batching.GENERATE_LOCK): on a CPU box one
  generate() already uses every core.
- stop: up to 4 strings; generation of a choice ends once one appears, the text is cut before
  its first occurrence and finish_reason is "stop". EOS also gives "stop"; hitting the token
  budget gives "length"; a parsed tool call gives "tool_calls".
- tools / tool_choice: "auto" (default with tools) renders the tools and parses tool calls (with a
  strict tool, text or calls under a grammar); "none" neither renders nor parses; "required" and
  {"type": "function", "function": {"name": ...}} are honoured by prefilling the assistant turn
  with the start of a `<tool_call>` block (with the name, for a named choice). The prefill counts
  as prompt tokens and is part of Choice.text. The rest of the call (a tool's name, arguments valid
  under its schema, the closing markup) is decoded under a grammar (ml/constraints.py), so it always
  parses unless the token budget ends first (then the block stays in the content, finish "length").
- response_format json_schema / json_object: every choice is decoded under that grammar
  (ml/constraints.py); per row, so constrained and plain requests share batches.
- max_tokens None means min(512, context left after the prompt); a larger max_tokens is clamped
  to the context left. A prompt that fills the context raises InvalidRequestError
  (code "context_length_exceeded").
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmill.errors import InvalidRequestError, NotFoundError
from modelmill.ml import ml_imports

with ml_imports():  # not alongside another thread's first import of the stack (see modelmill.ml)
    import torch
    # Straight from the submodule: transformers' lazy top-level __getattr__ is not thread-safe.
    from transformers.generation.streamers import TextIteratorStreamer

from modelmill.ml import batching, chat_families, chat_format, constraints, logits, models, multi_lora, vision
from modelmill.ml.types import DEFAULT_MAX_TOKENS, ModelRef  # DEFAULT_MAX_TOKENS: the budget when max_tokens is None

MAX_STOP_STRINGS = 4  # OpenAI's limit
MAX_N = 128  # OpenAI's limit on choices per request
TOOL_CALL_OPEN = "<tool_call>"  # ModelMill's ChatML tool-call marker (each family has its own: chat_families)


# ---------------------------------------------------------------------------------------------
# Shapes


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. Validated on construction (InvalidRequestError names the bad param)."""

    temperature: float = 1.0  # 0..2; 0 means greedy
    top_p: float = 1.0  # 0..1 nucleus mass; 1 disables, 0 means greedy
    max_tokens: int | None = None  # completion tokens per choice; None = context left, capped at 512
    n: int = 1  # choices per prompt, 1..128
    seed: int | None = None  # None = nondeterministic; an int makes sampling repeatable
    stop: list[str] | None = None  # up to 4 strings (a single str is accepted and wrapped)
    logprobs: bool = False  # return each generated token's logprob (ml/logits.py says of which distribution)
    top_logprobs: int | None = None  # 0..20 most likely tokens per position; needs logprobs
    logit_bias: dict[int, float] | None = None  # token id -> -100..100 added to its logit (str keys accepted)
    presence_penalty: float = 0.0  # -2..2, OpenAI's formula (ml/logits.py)
    frequency_penalty: float = 0.0  # -2..2
    response_format: dict | None = None  # OpenAI's response_format; json_schema / json_object are enforced
    # The grammar response_format asks for (ml/constraints.py), set from it on construction.
    constraint: constraints.Constraint | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        _check_number(self.temperature, "temperature", 0.0, 2.0)
        _check_number(self.top_p, "top_p", 0.0, 1.0)
        _check_number(self.presence_penalty, "presence_penalty", -2.0, 2.0)
        _check_number(self.frequency_penalty, "frequency_penalty", -2.0, 2.0)
        if self.top_logprobs is not None:
            if not _is_int(self.top_logprobs) or not 0 <= self.top_logprobs <= logits.MAX_TOP_LOGPROBS:
                raise InvalidRequestError(f"top_logprobs must be an integer from 0 to {logits.MAX_TOP_LOGPROBS}",
                                          param="top_logprobs")
            if not self.logprobs:
                raise InvalidRequestError("top_logprobs needs logprobs set to true", param="top_logprobs")
        object.__setattr__(self, "logit_bias", logits.parse_bias(self.logit_bias))
        if self.max_tokens is not None and (not _is_int(self.max_tokens) or self.max_tokens < 1):
            raise InvalidRequestError("max_tokens must be a positive integer", param="max_tokens")
        if not _is_int(self.n) or not 1 <= self.n <= MAX_N:
            raise InvalidRequestError(f"n must be an integer from 1 to {MAX_N}", param="n")
        if self.seed is not None and not _is_int(self.seed):
            raise InvalidRequestError("seed must be an integer", param="seed")
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        if stop is not None:
            if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
                raise InvalidRequestError("stop must be a string or an array of strings", param="stop")
            if len(stop) > MAX_STOP_STRINGS:
                raise InvalidRequestError(f"stop may hold at most {MAX_STOP_STRINGS} strings", param="stop")
            stop = [s for s in stop if s] or None
        object.__setattr__(self, "stop", stop)
        object.__setattr__(self, "constraint", constraints.from_response_format(self.response_format))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_p == 0


@dataclass(frozen=True)
class Choice:
    index: int
    text: str  # the raw generated text (tool-choice prefill included), cut at a stop string
    content: str | None  # text without parsed <tool_call> blocks; None when only tool calls remain
    tool_calls: list[dict]  # OpenAI shape: {"id", "type": "function", "function": {"name", "arguments"}}
    finish_reason: str  # "stop" | "length" | "tool_calls"
    completion_tokens: int = 0  # tokens generated for this choice
    # With params.logprobs: OpenAI ChatCompletionTokenLogprob dicts, one per generated token of
    # `text` (tool-call markup included, the prefill and end-of-turn token not); None otherwise.
    logprobs: list[dict] | None = None


@dataclass(frozen=True)
class GenerationResult:
    choices: list[Choice]
    prompt_tokens: int  # counted once per prompt, as OpenAI does (prefill included)
    completion_tokens: int  # summed over choices

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def usage(self) -> dict:
        return _usage(self.prompt_tokens, self.completion_tokens)


@dataclass(frozen=True)
class StreamEvent:
    """One streamed piece. Each choice ends with an event whose finish_reason is set (carrying
    its parsed tool_calls, if any); the last event of the stream also carries usage."""

    delta: str = ""  # content text to append
    index: int = 0  # which choice
    finish_reason: str | None = None  # set on the choice's final event
    tool_calls: list[dict] | None = None  # set on the final event when tool calls were parsed
    usage: dict | None = None  # {"prompt_tokens", "completion_tokens", "total_tokens"} on the very last event
    # With params.logprobs: the ChatCompletionTokenLogprob dicts of the tokens this event's text
    # completes (tool-call tokens come with the final event); their concatenation over a choice
    # equals generate()'s Choice.logprobs.
    logprobs: list[dict] | None = None


# (base_dir, adapter_dir) -> (model, tokenizer). The Sampler calls it with adapter_dir None (it loads
# adapters onto the cached base itself); a loader that returns a PeftModel gets it merged.
Loader = Callable[[Path, "Path | None"], tuple[Any, Any]]


# ---------------------------------------------------------------------------------------------
# Loading


def _default_loader(base_dir: Path, adapter_dir: Path | None) -> tuple[Any, Any]:
    return models.load_model(base_dir, adapter_dir)  # float32, safetensors only, no remote code


@dataclass
class _Loaded:
    model: Any  # a multi_lora.MultiLoraModel, or a backend's host (vllm_backend.VLLMHost); the batching key
    tokenizer: Any
    eos_ids: list[int] = field(default_factory=list)
    context: int = 2048
    tok_lock: Any = field(default_factory=threading.RLock)  # every tokenizer call holds it (Rust, not thread-safe)
    processor: Any = None  # a vision-language model's processor (ml/vision.py); None = text-only model


def _prepare(model, tokenizer) -> _Loaded:
    if hasattr(model, "merge_and_unload"):  # a PeftModel: fold the LoRA into this private copy (faster decoding)
        model = model.merge_and_unload()
    model.eval()
    tokenizer.padding_side = "left"  # batched decoding needs the prompts right-aligned
    eos_ids = end_token_ids(tokenizer, model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = model.config  # a VLM keeps its text model's context in text_config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    context = getattr(config, "max_position_embeddings", None) or 2048
    return _Loaded(model, tokenizer, eos_ids, int(context))


def end_token_ids(tokenizer, model) -> list[int]:
    """The token ids a completion ends on (also what ml/export.py writes to generation_config.json)."""
    eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")}
    # The family's end-of-turn tokens (Llama's <|eot_id|>, ...) end a completion even when the
    # tokenizer's eos_token is another one.
    eos.update(tokenizer.convert_tokens_to_ids(t) for t in chat_families.family_of(tokenizer).end_tokens
               if t in tokenizer.get_vocab())
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in eos if isinstance(i, int) and i >= 0 and i != tokenizer.unk_token_id)


# ---------------------------------------------------------------------------------------------
# The sampler


@dataclass(frozen=True)
class _Prompt:
    text: str  # rendered chat template, ending with the assistant header (+ prefill)
    prefill: str  # forced start of the completion (tool_choice required / named), "" otherwise
    parse_tools: bool  # parse tool calls out of the completion
    family: chat_families.Family = chat_families.FAMILIES["chatml"]  # how tool calls look and parse
    constraint: constraints.Constraint | None = None  # the rest of a forced tool call (after the prefill)
    images: tuple = ()  # PIL images of a VLM prompt, in the order of their placeholders in `text`


class Sampler:
    """Generates chat completions; keeps up to `cache_size` base models (LRU), each with up to
    `max_adapters` LoRA adapters loaded by name (LRU); thread-safe.

    `loader(base_dir, None) -> (model, tokenizer)` is injectable (tests count calls); it defaults
    to ml.models.load_model. Adapters are loaded onto the cached base (ml/multi_lora.py), so all
    fine-tuned models of one base share one copy of it and one batch (ml/batching.py).
    `backend` (e.g. vllm_backend.VLLMBackend) replaces both the loader and the local batcher:
    it loads only the tokenizer and config here and decodes elsewhere.
    """

    def __init__(self, cache_size: int = 4, loader: Loader | None = None, *,
                 batch_window_s: float = batching.DEFAULT_WINDOW_S, max_batch_rows: int = batching.DEFAULT_MAX_ROWS,
                 max_adapters: int = multi_lora.DEFAULT_MAX_ADAPTERS, backend: Any = None):
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.cache_size = cache_size
        self.load_count = 0  # how many times a base model was actually loaded (cache misses)
        self.max_adapters = max_adapters
        self.backend = backend  # None = transformers in this process
        self._loader = loader or _default_loader
        self._lock = threading.Lock()
        self._models: OrderedDict[Path, _Loaded] = OrderedDict()
        self._loading: dict[Path, threading.Lock] = {}
        # batch_window_s: how long an idle model waits for more requests (0 = start at once);
        # max_batch_rows: rows (prompts x sampled choices) decoded together at most.
        self._batcher = backend if backend is not None else batching.Batcher(window_s=batch_window_s,
                                                                               max_rows=max_batch_rows)
        # Where image_url parts may be fetched from (inference.py sets Settings.image_hosts); data: URLs always.
        self.image_policy = vision.ImagePolicy()

    @property
    def batch_history(self) -> list[tuple[int, int]]:
        """(requests, rows) of each recent batched generate(), oldest first."""
        return list(self._batcher.history)

    @property
    def queued(self) -> int:
        """Requests waiting for a batch right now (not counting the one being decoded)."""
        return self._batcher.queued

    # -- cache ---------------------------------------------------------------------------------

    def cached(self) -> list[tuple[Path, Path | None]]:
        """(base_dir, adapter_dir or None) of every servable model loaded: each base (least recently
        used first), followed by the adapters loaded onto it (least recently used first)."""
        with self._lock:
            bases = list(self._models.items())
        return [pair for base, loaded in bases for pair in [(base, None)] + [(base, a) for a in loaded.model.adapters()]]

    def evict(self, ref: ModelRef) -> bool:
        """Drop an adapter (ref with adapter_dir; not while a request uses it) or a whole base."""
        base, adapter = _key(ref)
        with self._lock:
            if adapter is None:
                return self._models.pop(base, None) is not None
            loaded = self._models.get(base)
        return loaded is not None and loaded.model.evict(adapter)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def load(self, ref: ModelRef) -> tuple[Any, Any]:
        """(model, tokenizer) for ref, loading it at most once while it stays cached. The model is
        the shared base (with its adapters loaded by name, ref's among them)."""
        loaded, adapter = self._acquire(ref)
        loaded.model.release(adapter)
        return getattr(loaded.model, "model", loaded.model), loaded.tokenizer

    def _acquire(self, ref: ModelRef) -> tuple[_Loaded, str | None]:
        """The loaded base of ref and ref's adapter name (None for the base), pinned: the caller
        must call loaded.model.release(name) once its request is done."""
        base, adapter = _key(ref)
        loaded = self._get(base)
        return loaded, loaded.model.acquire(adapter)

    def _get(self, key: Path) -> _Loaded:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # two first requests for one model load it once (models.load_model serialises loads)
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
            try:
                if not (key / "config.json").is_file():
                    raise NotFoundError(f"model directory {key} not found (no config.json)")
                if self.backend is not None:
                    loaded = _prepare(*self.backend.load_base(key))
                else:
                    loaded = _prepare(*self._loader(key, None))
                    loaded.model = multi_lora.MultiLoraModel(loaded.model, self.max_adapters)
                    loaded.processor = vision.load_processor(key) if vision.is_vision_dir(key) else None
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:  # publish and release in one step, so no third caller loads it again
                self.load_count += 1
                self._models[key] = loaded
                self._loading.pop(key, None)
                while len(self._models) > self.cache_size:
                    self._models.popitem(last=False)  # in-flight users keep their reference
            return loaded

    # -- generation ----------------------------------------------------------------------------

    def generate(self, ref: ModelRef, messages: list[dict], tools: list[dict] | None = None,
                 params: SamplingParams | None = None, tool_choice: Any = None,
                 cancel: threading.Event | None = None) -> GenerationResult:
        """Complete one conversation: params.n choices. Setting `cancel` (the caller's client went
        away) ends every row at the next decoding step (the choices then hold what was decoded so
        far), or raises batching.GenerationCancelled if the request was still queued."""
        return self.batch_generate(ref, [messages], params, tools=tools, tool_choice=tool_choice, cancel=cancel)[0]

    def batch_generate(self, ref: ModelRef, conversations: list[list[dict]], params: SamplingParams | None = None,
                       *, tools: list | None = None, tool_choice: Any = None,
                       cancel: threading.Event | None = None) -> list[GenerationResult]:
        """Complete many conversations in one left-padded batch (evals, RFT rollouts).

        tools is either one tools list shared by all conversations or a list with one tools
        list (or None) per conversation. One result per conversation, each with params.n choices.
        The call is one request to the batcher: its conversations are never split across
        batches, and other concurrent requests for the same model may join its batch.
        """
        params = params or SamplingParams()
        if not conversations:
            return []
        loaded, adapter = self._acquire(ref)
        try:
            per_item = _tools_per_conversation(tools, len(conversations))
            prompts = [self._render(loaded, msgs, t, tool_choice) for msgs, t in zip(conversations, per_item)]
            request = self._request(loaded, prompts, params, adapter=adapter, cancel=cancel)
            rows = self._batcher.submit(request).wait()
        finally:
            loaded.model.release(adapter)
        copies = request.copies
        results = []
        for i, (prompt, budget) in enumerate(zip(prompts, request.budgets)):
            mine = [_choice(loaded, ids, hit_eos, prompt, params, budget, request.logprobs[i * copies + j])
                    for j, (ids, hit_eos) in enumerate(rows[i * copies:(i + 1) * copies])]
            if copies == 1:
                mine = mine * params.n  # greedy: n identical choices from one decode
            choices = [_with_index(c, j) for j, c in enumerate(mine)]
            results.append(GenerationResult(choices, len(request.prompt_ids[i]),
                                            sum(c.completion_tokens for c in choices)))
        return results

    def _request(self, loaded: _Loaded, prompts: list[_Prompt], params: SamplingParams,
                 sink=None, cancel: threading.Event | None = None, adapter: str | None = None) -> batching.BatchRequest:
        """Tokenize and budget each prompt (request errors raise here, in the caller) -> a BatchRequest."""
        with loaded.tok_lock:
            prompt_ids = [loaded.tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
            copies = 1 if params.greedy else params.n
            model_inputs = vision.prompt_inputs(loaded.processor, prompt_ids, [list(p.images) for p in prompts],
                                                copies) if any(p.images for p in prompts) else None
        budgets = [_budget(params, loaded.context, len(ids)) for ids in prompt_ids]
        # A request without a seed takes one from the global RNG, so torch.manual_seed still
        # makes a single-threaded program repeatable.
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2 ** 62, ()).item())
        settings = batching.DecodeSettings(greedy=params.greedy, temperature=params.temperature, top_p=params.top_p,
                                           stop=params.stop, seed=seed,
                                           logit_bias=logits.check_bias_ids(params.logit_bias, loaded.tokenizer),
                                           presence_penalty=float(params.presence_penalty),
                                           frequency_penalty=float(params.frequency_penalty),
                                           top_logprobs=(params.top_logprobs or 0) if params.logprobs else None)
        return batching.BatchRequest(
            # a request with images decodes alone (its image tensors are its own), text shares batches
            key=loaded.model if model_inputs is None else ("images", object()), model=loaded.model, tokenizer=loaded.tokenizer, tok_lock=loaded.tok_lock,
            eos_ids=loaded.eos_ids, pad_id=loaded.tokenizer.pad_token_id, prompt_ids=prompt_ids, budgets=budgets,
            copies=copies, settings=settings, sink=sink, cancel=cancel, adapter=adapter,
            constraints=_constraints(prompts, params), model_inputs=model_inputs)

    def _render(self, loaded: _Loaded, messages: list[dict], tools: list[dict] | None, tool_choice: Any) -> _Prompt:
        """_render, with a VLM's image parts as its placeholders and the images loaded (a 400 for a bad
        image, or for images sent to a text-only model)."""
        if not vision.has_images(messages):
            return _render(loaded.tokenizer, messages, tools, tool_choice)
        if loaded.processor is None:
            why = ("images are not served through the vLLM backend yet" if self.backend is not None else
                   "this model is text-only: it cannot read image input. Send text parts only, or use a "
                   "vision-language model")
            raise InvalidRequestError(why, param="messages", code="unsupported_content")
        messages, urls = vision.with_placeholders(messages, loaded.processor.image_token)
        try:
            images = tuple(vision.load_image(u, self.image_policy) for u in urls)
        except vision.ImageError as e:
            raise InvalidRequestError(e.message, param="messages", code=e.code) from None
        return dataclasses.replace(_render(loaded.tokenizer, messages, tools, tool_choice), images=images)

    def stream(self, ref: ModelRef, messages: list[dict], tools: list[dict] | None = None,
               params: SamplingParams | None = None, tool_choice: Any = None,
               cancel: threading.Event | None = None) -> Iterator[StreamEvent]:
        """Yield content deltas as they are generated, then a final event with finish_reason/usage.

        Text that could be the start of a stop string or of a `<tool_call>` block is held back
        until it is decided, so a client never sees a stop string or raw tool-call markup; for
        greedy decoding the concatenated deltas equal generate()'s text when no tool call is
        parsed. n > 1 is served by one batched generate() emitted choice by choice. A streamed
        request (n = 1) is batched like any other: its tokens are handed to it step by step.

        Request errors (unknown model, bad tool_choice, prompt longer than the context) raise
        here, before an iterator is returned, so a server can still answer with a 4xx.
        `cancel`, set from another thread (the HTTP client went away), ends the generation at the
        next decoding step, even while the consumer waits for text that is being held back.
        """
        params = params or SamplingParams()
        if params.n > 1:
            return self._stream_from_result(self.generate(ref, messages, tools, params, tool_choice, cancel=cancel))
        loaded, adapter = self._acquire(ref)
        try:
            prompt = self._render(loaded, messages, tools, tool_choice)
            streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=False, skip_special_tokens=True)
            request = self._request(loaded, [prompt], params, sink=streamer, cancel=cancel or threading.Event(),
                                    adapter=adapter)
        except BaseException:
            loaded.model.release(adapter)
            raise
        return self._stream_one(loaded, prompt, request, params)

    def _stream_from_result(self, result: GenerationResult) -> Iterator[StreamEvent]:
        last = len(result.choices) - 1
        for c in result.choices:
            lps = c.logprobs  # with the content; with the final event when there is none (tool calls)
            if c.content:
                yield StreamEvent(delta=c.content, index=c.index, logprobs=lps)
                lps = None
            yield StreamEvent(index=c.index, finish_reason=c.finish_reason, tool_calls=c.tool_calls or None,
                              usage=result.usage if c.index == last else None, logprobs=lps)

    def _stream_one(self, loaded: _Loaded, prompt: _Prompt, request: batching.BatchRequest,
                    params: SamplingParams) -> Iterator[StreamEvent]:
        # Queued on the first next(), as a generator that is never iterated never started before.
        # The adapter stays pinned (not evictable) until the generator ends or is closed.
        try:
            yield from self._stream_events(request, prompt, params)
        finally:
            loaded.model.release(request.adapter)

    def _stream_events(self, request: batching.BatchRequest, prompt: _Prompt,
                       params: SamplingParams) -> Iterator[StreamEvent]:
        self._batcher.submit(request)
        markers = (params.stop or []) + (list(prompt.family.markers) if prompt.parse_tools else [])
        text, sent, stopped = "", 0, False
        lps = logits.StreamedLogprobs(request.tokenizer, request.tok_lock, request) if params.logprobs else None
        try:
            for piece in request.sink:
                text += piece
                cut = _first_stop(text, params.stop)
                if cut is not None:
                    text, stopped = text[:cut], True
                    request.cancel.set()
                    break
                safe = _safe_prefix_len(text, markers, prompt)
                if safe > sent:
                    yield StreamEvent(delta=text[sent:safe], logprobs=lps.take(safe) if lps else None)
                    sent = safe
        finally:
            request.cancel.set()  # the consumer went away (or we stopped): end this row promptly
        ((ids, hit_eos),) = request.wait()
        budget = request.budgets[0]
        finish = "stop" if stopped or hit_eos else "length" if len(ids) >= budget else "stop"
        calls: list[dict] = []
        if prompt.parse_tools:
            _, calls = prompt.family.parse(prompt.prefill + text)
        rest = "" if calls else prompt.prefill + text[sent:]  # sent is 0 whenever there is a prefill
        yield StreamEvent(delta=rest, finish_reason="tool_calls" if calls else finish, tool_calls=calls or None,
                          usage=_usage(len(request.prompt_ids[0]), len(ids)),
                          logprobs=lps.rest(len(text) if stopped else None) if lps else None)
        # (text after a parsed tool call is not streamed; generate()'s content would include it)


# ---------------------------------------------------------------------------------------------
# Helpers


def _choice(loaded: _Loaded, ids: list[int], hit_eos: bool, prompt: _Prompt, params: SamplingParams,
            budget: int, steps: list | None = None) -> Choice:
    """One generated row -> Choice: cut at the first stop string, parse tool calls, pick finish_reason."""
    with loaded.tok_lock:
        text = loaded.tokenizer.decode(ids, skip_special_tokens=True)
        entries = logits.entries(loaded.tokenizer, (steps or [])[:len(ids)]) if params.logprobs else None
    cut = _first_stop(text, params.stop)
    if cut is not None:
        text, finish = text[:cut], "stop"
    else:
        finish = "stop" if hit_eos or len(ids) < budget else "length"
    if entries is not None:
        entries = logits.up_to(entries, cut)
    full = prompt.prefill + text
    if prompt.parse_tools:
        content, calls = prompt.family.parse(full)
        if calls:
            return Choice(0, full, content, calls, "tool_calls", len(ids), entries)
    return Choice(0, full, full, [], finish, len(ids), entries)


def _constraints(prompts: list[_Prompt], params: SamplingParams) -> list[constraints.Constraint | None] | None:
    """Per prompt: a forced call's grammar, else response_format's, else strict tools' (None: nothing constrained)."""
    per = [p.constraint if p.prefill else params.constraint or p.constraint for p in prompts]
    return per if any(per) else None


def _render(tokenizer, messages: list[dict], tools: list[dict] | None, tool_choice: Any) -> _Prompt:
    mode, forced_name = _tool_mode(tools, tool_choice)
    from jinja2 import TemplateError

    family = chat_families.family_of(tokenizer)
    try:
        text = chat_format.render(tokenizer, messages, tools if mode != "none" else None, add_generation_prompt=True)
    except (TemplateError, TypeError, AttributeError, KeyError) as e:
        raise InvalidRequestError(f"could not render messages with the chat template: {e}", param="messages") from e
    except RecursionError:  # e.g. tool parameters nested hundreds deep: the request's fault, so a 400
        raise InvalidRequestError("could not render the chat template: the request's "
                                  f"{'tools are' if tools else 'messages are'} nested too deeply",
                                  param="tools" if tools else "messages", code="nested_too_deeply") from None
    prefill = family.prefill(forced_name) if mode == "required" else ""
    # A forced call, or any call under "auto" with a strict tool, is decoded under a grammar (ml/constraints.py).
    constraint = constraints.for_tools(tools, mode, forced_name, family, tokenizer)
    return _Prompt(text + prefill, prefill, parse_tools=mode != "none", family=family, constraint=constraint)


def _tool_mode(tools: list[dict] | None, tool_choice: Any) -> tuple[str, str | None]:
    """("none" | "auto" | "required", forced function name or None)."""
    names = [(t.get("function") or {}).get("name") for t in tools or [] if isinstance(t, dict)]
    if tool_choice is None:
        return ("auto" if names else "none"), None
    if tool_choice in ("none", "auto"):
        return ("none" if tool_choice == "none" or not names else "auto"), None
    if tool_choice == "required":
        if not names:
            raise InvalidRequestError("tool_choice 'required' needs tools", param="tool_choice")
        return "required", None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name not in names:
            raise InvalidRequestError(f"tool_choice names function {name!r}, which is not in tools",
                                      param="tool_choice")
        return "required", name
    raise InvalidRequestError("tool_choice must be 'none', 'auto', 'required' or "
                              '{"type": "function", "function": {"name": ...}}', param="tool_choice")


def _tools_per_conversation(tools: list | None, n: int) -> list[list[dict] | None]:
    if tools and all(t is None or isinstance(t, list) for t in tools):
        if len(tools) != n:
            raise InvalidRequestError("per-conversation tools must have one entry per conversation", param="tools")
        return list(tools)
    return [tools] * n


def _budget(params: SamplingParams, context: int, prompt_len: int) -> int:
    left = context - prompt_len
    if left <= 0:
        raise InvalidRequestError(f"the prompt is {prompt_len} tokens; the model's context is {context}",
                                  param="messages", code="context_length_exceeded")
    return min(params.max_tokens or DEFAULT_MAX_TOKENS, left)


def _first_stop(text: str, stops: list[str] | None) -> int | None:
    hits = [i for i in (text.find(s) for s in stops or []) if i >= 0]
    return min(hits) if hits else None


def _safe_prefix_len(text: str, markers: list[str], prompt: _Prompt) -> int:
    """How much of the streamed text can be sent: not a forced tool call, not past the first
    tool-call marker of the model's family, and not a trailing piece that may grow into a stop
    string or marker."""
    if prompt.prefill:
        return 0
    limit = len(text)
    if prompt.parse_tools:
        for marker in prompt.family.markers:
            t = text.find(marker)
            if t >= 0:
                limit = min(limit, t)
    for m in markers:
        for k in range(min(len(m) - 1, len(text)), 0, -1):
            if text.endswith(m[:k]):
                limit = min(limit, len(text) - k)
                break
    return limit


def _with_index(c: Choice, index: int) -> Choice:
    return dataclasses.replace(c, index=index)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _key(ref: ModelRef) -> tuple[Path, Path | None]:
    return Path(ref.base_dir).resolve(), Path(ref.adapter_dir).resolve() if ref.adapter_dir else None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_number(v: Any, name: str, lo: float, hi: float) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise InvalidRequestError(f"{name} must be a number from {lo:g} to {hi:g}", param=name)

