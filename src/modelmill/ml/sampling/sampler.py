"""The Sampler: an LRU cache of loaded base models (each with its LoRA adapters loaded by name) and the
generate / batch_generate / stream calls that turn conversations into batched decodes (ml/batching.py) and
decoded rows back into choices. The semantics are in ml/sampling/__init__.py."""

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

from modelmill.ml import batching, chat_families, logits, models, multi_lora, vision
from modelmill.ml.sampling.params import Choice, GenerationResult, SamplingParams, StreamEvent, token_usage
from modelmill.ml.sampling.prompts import (Prompt, first_stop, render, row_constraints, safe_prefix_len, token_budget,
                                          tools_per_conversation)
from modelmill.ml.types import ModelRef

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
            per_item = tools_per_conversation(tools, len(conversations))
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

    def _request(self, loaded: _Loaded, prompts: list[Prompt], params: SamplingParams,
                 sink=None, cancel: threading.Event | None = None, adapter: str | None = None) -> batching.BatchRequest:
        """Tokenize and budget each prompt (request errors raise here, in the caller) -> a BatchRequest."""
        with loaded.tok_lock:
            prompt_ids = [loaded.tokenizer(p.text, add_special_tokens=False)["input_ids"] for p in prompts]
            copies = 1 if params.greedy else params.n
            images = vision.prompt_inputs(loaded.processor, prompt_ids, [list(p.images) for p in prompts]
                                          ) if any(p.images for p in prompts) else None
        budgets = [token_budget(params, loaded.context, len(ids)) for ids in prompt_ids]
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
            # requests with and without images share batches: each row's images travel with it (batching.decode_batch)
            key=loaded.model, model=loaded.model, tokenizer=loaded.tokenizer, tok_lock=loaded.tok_lock,
            eos_ids=loaded.eos_ids, pad_id=loaded.tokenizer.pad_token_id, prompt_ids=prompt_ids, budgets=budgets,
            copies=copies, settings=settings, sink=sink, cancel=cancel, adapter=adapter,
            constraints=row_constraints(prompts, params), images=images)

    def _render(self, loaded: _Loaded, messages: list[dict], tools: list[dict] | None, tool_choice: Any) -> Prompt:
        """prompts.render, with a VLM's image parts as its placeholders and the images loaded (a 400 for a bad
        image, or for images sent to a text-only model)."""
        if not vision.has_images(messages):
            return render(loaded.tokenizer, messages, tools, tool_choice)
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
        return dataclasses.replace(render(loaded.tokenizer, messages, tools, tool_choice), images=images)

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

    def _stream_one(self, loaded: _Loaded, prompt: Prompt, request: batching.BatchRequest,
                    params: SamplingParams) -> Iterator[StreamEvent]:
        # Queued on the first next(), as a generator that is never iterated never started before.
        # The adapter stays pinned (not evictable) until the generator ends or is closed.
        try:
            yield from self._stream_events(request, prompt, params)
        finally:
            loaded.model.release(request.adapter)

    def _stream_events(self, request: batching.BatchRequest, prompt: Prompt,
                       params: SamplingParams) -> Iterator[StreamEvent]:
        self._batcher.submit(request)
        markers = (params.stop or []) + (list(prompt.family.markers) if prompt.parse_tools else [])
        text, sent, stopped = "", 0, False
        lps = logits.StreamedLogprobs(request.tokenizer, request.tok_lock, request) if params.logprobs else None
        try:
            for piece in request.sink:
                text += piece
                cut = first_stop(text, params.stop)
                if cut is not None:
                    text, stopped = text[:cut], True
                    request.cancel.set()
                    break
                safe = safe_prefix_len(text, markers, prompt)
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
                          usage=token_usage(len(request.prompt_ids[0]), len(ids)),
                          logprobs=lps.rest(len(text) if stopped else None) if lps else None)
        # (text after a parsed tool call is not streamed; generate()'s content would include it)



def _choice(loaded: _Loaded, ids: list[int], hit_eos: bool, prompt: Prompt, params: SamplingParams,
            budget: int, steps: list | None = None) -> Choice:
    """One generated row -> Choice: cut at the first stop string, parse tool calls, pick finish_reason."""
    with loaded.tok_lock:
        text = loaded.tokenizer.decode(ids, skip_special_tokens=True)
        entries = logits.entries(loaded.tokenizer, (steps or [])[:len(ids)]) if params.logprobs else None
    cut = first_stop(text, params.stop)
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



def _with_index(c: Choice, index: int) -> Choice:
    return dataclasses.replace(c, index=index)



def _key(ref: ModelRef) -> tuple[Path, Path | None]:
    return Path(ref.base_dir).resolve(), Path(ref.adapter_dir).resolve() if ref.adapter_dir else None
