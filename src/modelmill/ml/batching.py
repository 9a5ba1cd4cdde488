"""Batching of concurrent generation requests: one left-padded model.generate() for many callers.

ml.sampling turns each generate() / batch_generate() / stream() call into a BatchRequest and
hands it to its Batcher. The Batcher's thread takes every pending request for the same loaded
model (up to max_rows rows), decodes them together in ONE transformers generate() call and
hands each caller its own rows back. On a CPU one generate() already uses every core, and a
decoding step for 8 rows costs far less than 8 steps for 1 row (the weights are read once per
step either way): in development runs on 2 shared cores, 8 concurrent 64-token SmolLM2-135M
requests decoded in one batch in about 2.5x the time of one request alone.

When requests are collected:
- Requests that arrive while a batch is decoding wait in the queue and form the next batch.
- A request that finds the model idle waits a short collection window (`window_s`, 10 ms by
  default) so that requests sent at about the same moment start together: the batch starts
  once no new request has arrived for `window_s`, and at the latest `max_wait_s` (50 ms) after
  the oldest pending request arrived. A 64-token answer of SmolLM2-135M takes seconds on a CPU
  (4-11 s in development runs on a shared 2-core machine), so the window is a small share of a
  lone request's latency, while a burst of HTTP requests (each parsed, authenticated and resolved
  in its own thread first) reached the batcher spread over 2-16 ms in those runs.

What each request keeps to itself inside a shared batch (so batching never changes a result
beyond float32 round-off of padded matmuls, which greedy batch_generate() always had):
- its own max_tokens budget, stop strings and cancellation: _BatchMonitor, a StoppingCriteria
  that generate() calls after every step, ends each row on its own (EOS, budget, stop string,
  a stream consumer that went away). A request is handed back as soon as its own rows are done,
  without waiting for longer batch-mates;
- its own temperature / top_p and its own random stream: _RowSampling (below);
- its own streaming: the monitor feeds each new token of a streamed row to that request's
  TextIteratorStreamer (transformers' streamers take one sequence only);
- its own errors: request errors (bad params, prompt longer than the context) are raised in the
  caller before anything is queued; if a whole batched generate() fails, each request that has
  not finished or streamed yet is retried alone, so only the request that breaks generation fails.

Requests batch together when they use the same loaded base model, whatever LoRA adapter each
uses: the Sampler keeps one copy of each base with its adapters loaded by name
(ml/multi_lora.py), and a batch whose rows use several adapters decodes in one generate(), each
row with its own adapter's LoRA (a batch of one adapter runs with that adapter merged, at the
speed of a merged model; multi_lora.py says how a mixed batch runs and what it costs). Before, each adapter was merged into its own copy of the base and two
adapters' requests ran as two batches one after the other: 8 concurrent requests split 4 + 4
over two adapters got about half the throughput of 8 to one adapter (bench/bench_serving.py).

A VLM's requests batch the same way with or without images: each request carries its prompts' image
tensors (processed in the caller's thread), and decode_batch lays every row's images out beside it for
the one generate() (vision.batch_pixels; text rows have none). The one exception (_joins): images never
share a batch with rows of other adapters when an adapter there cannot give each image its own row's
LoRA (multi_lora.MultiLoraModel.mixes_images); such a request waits for a batch of its own adapter.

Process-wide, every model.generate() still runs under one lock (GENERATE_LOCK): two samplers in
one process (the API's and the worker's) or two models would otherwise fight over the same
cores.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from modelmill.errors import RequestCancelledError
from modelmill.ml import constraints, logits, ml_imports, observers, vision

with ml_imports():  # not alongside another thread's first import of the stack (see modelmill.ml)
    import torch
    # Straight from the submodules: transformers' lazy top-level __getattr__ is not thread-safe.
    from transformers.generation.configuration_utils import GenerationConfig
    from transformers.generation.logits_process import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopPLogitsWarper)
    from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

log = logging.getLogger(__name__)


class GenerationCancelled(RequestCancelledError):
    """A request's cancel flag was set before its rows were decoded (its caller has gone)."""


GENERATE_LOCK = threading.Lock()  # one model.generate() at a time in the process (see above)
DEFAULT_WINDOW_S = 0.01  # collection window: start once no request arrived for this long
DEFAULT_MAX_WAIT_S = 0.05  # ... or this long after the oldest pending request arrived
DEFAULT_MAX_ROWS = 32  # rows (prompts x sampled choices) per batch; one bigger request runs alone


@dataclass(frozen=True)
class DecodeSettings:
    """How one request samples; rows of different requests may differ in all of these."""

    greedy: bool  # argmax decoding (temperature or top_p 0)
    temperature: float  # > 0 when not greedy
    top_p: float  # nucleus mass, 1 = off
    stop: list[str] | None  # a row ends once one of these appears in its decoded text
    seed: int  # seeds this request's own torch.Generator (ignored when greedy)
    logit_bias: dict[int, float] | None = None  # token id -> bias added to its logit (ml/logits.py)
    presence_penalty: float = 0.0  # OpenAI's additive penalties over the row's generated tokens
    frequency_penalty: float = 0.0
    top_logprobs: int | None = None  # None = no logprobs; k >= 0 = record each token's logprob + top k

    @property
    def adjusts(self) -> bool:
        """True when this request needs _RowSampling even if it decodes greedily."""
        return bool(self.logit_bias or self.presence_penalty or self.frequency_penalty
                    or self.top_logprobs is not None)


@dataclass(eq=False)
class BatchRequest:
    """One caller's share of a batch: len(prompt_ids) prompts x `copies` rows each.

    Filled by the batch thread: `rows[r]` = (generated token ids, ended_with_eos) for each row,
    prompt-major (prompt i's copies are rows i*copies ... i*copies+copies-1).
    """

    key: Hashable  # requests share a batch only when their keys are equal (one loaded base model)
    model: Any  # a transformers model, or a multi_lora.MultiLoraModel (rows may then differ in adapter)
    tokenizer: Any
    tok_lock: Any  # an RLock guarding every use of `tokenizer` (the Rust tokenizer is not thread-safe)
    eos_ids: list[int]
    pad_id: int
    prompt_ids: list[list[int]]  # unpadded prompt token ids, one list per prompt
    budgets: list[int]  # max new tokens per prompt (already clamped to the context)
    copies: int  # rows per prompt (n for sampled choices, 1 for greedy)
    settings: DecodeSettings
    adapter: str | None = None  # the LoRA adapter name every row of this request decodes with; None = base
    # Per prompt, the grammar its rows must follow (an ml.constraints.Constraint) or None: structured
    # outputs and forced tool calls. None = no prompt is constrained.
    constraints: list[Any] | None = None
    sink: Any = None  # a TextIteratorStreamer fed with this request's tokens (single-row requests)
    # A VLM request's images: per prompt, its images' image-processor tensors (ml/vision.prompt_inputs),
    # laid out with the rest of the batch's rows at decode time (vision.batch_pixels). None = text only.
    images: list[list[dict]] | None = None
    # Set when nobody wants the rows any more (a stream consumer stopped reading, an HTTP client
    # disconnected): every row of the request ends at the next decoding step, and a request still
    # queued is dropped before it is decoded.
    cancel: threading.Event | None = None
    rows: list[tuple[list[int], bool] | None] = field(default_factory=list)
    error: BaseException | None = None
    streamed: bool = False  # a token went to the sink already (such a request cannot be re-run)
    enqueued: float = 0.0  # time.monotonic() when submitted
    batch_rows: int = 0  # rows in the batch this request was decoded in (for stats and tests)
    # Per row, one logits.StepLogprob per generated token, appended as it is decoded (before the
    # token goes to the sink), when settings.top_logprobs is not None.
    logprobs: list[list] = field(default_factory=list)
    _done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.rows = [None] * self.n_rows
        self.logprobs = [[] for _ in range(self.n_rows)]

    @property
    def n_rows(self) -> int:
        return len(self.prompt_ids) * self.copies

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def wait(self) -> list[tuple[list[int], bool]]:
        """Block until every row is done; re-raise the batch's error for this request."""
        self._done.wait()
        if self.error is not None:
            raise self.error
        return self.rows  # type: ignore[return-value]

    def row_done(self, j: int, ids: list[int], hit_eos: bool) -> None:
        self.rows[j] = (ids, hit_eos)
        if all(r is not None for r in self.rows):
            self._resolve()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._resolve()

    def _resolve(self) -> None:
        if self.sink is not None:
            with self.tok_lock:  # end() decodes the text still held back
                self.sink.end()  # unblocks the stream consumer
        self._done.set()


# ---------------------------------------------------------------------------------------------
# The scheduler


class Batcher:
    """Collects BatchRequests and decodes them in batches on one thread, started on demand.

    The thread exits when the queue is empty (no idle thread per Sampler); the next submit()
    starts a new one. `history` keeps (requests, rows) of the most recent batches.
    """

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, max_wait_s: float = DEFAULT_MAX_WAIT_S,
                 max_rows: int = DEFAULT_MAX_ROWS, decode: Callable[[list[BatchRequest]], None] | None = None):
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.window_s, self.max_wait_s, self.max_rows = window_s, max(max_wait_s, window_s), max_rows
        self.history: deque[tuple[int, int]] = deque(maxlen=1000)  # (requests, rows) per batch
        self._decode = decode or decode_batch
        self._cond = threading.Condition()
        self._pending: list[BatchRequest] = []
        self._busy = False

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    def submit(self, request: BatchRequest) -> BatchRequest:
        with self._cond:
            request.enqueued = time.monotonic()
            self._pending.append(request)
            if not self._busy:
                self._busy = True
                threading.Thread(target=self._loop, name="modelmill-batcher", daemon=True).start()
        return request

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    self._busy = False
                    return
            self._collect()
            with self._cond:
                batch = self._take()
            if not batch:  # every pending request was cancelled
                continue
            self.history.append((len(batch), sum(r.n_rows for r in batch)))
            observers.notify(observers.BATCH, *self.history[-1])
            self._run(batch)

    def _collect(self) -> None:
        """Wait until no request arrived for window_s (at most max_wait_s after the oldest one)."""
        while True:
            with self._cond:
                rows = sum(r.n_rows for r in self._pending)
                newest = self._pending[-1].enqueued
                oldest = self._pending[0].enqueued
            wait = min(newest + self.window_s, oldest + self.max_wait_s) - time.monotonic()
            if wait <= 0 or rows >= self.max_rows:
                return
            time.sleep(wait)

    def _take(self) -> list[BatchRequest]:
        """The oldest request plus every later one for the same model that still fits. Requests
        cancelled while they waited (their client went away) are dropped here, never decoded.

        Image requests are offered a place before text requests (each kind oldest first): only
        images are choosy about their batch-mates (_joins), and a text request of another adapter
        taken first would shut out the image requests of the oldest request's own adapter, which
        then each decode alone (text rows of adapters a and e taken together, then a's image and
        e's image apart: four generate() calls where two do). Without images (any text model) this
        is plain oldest-first."""
        for r in [r for r in self._pending if r.cancel is not None and r.cancel.is_set()]:
            self._pending.remove(r)
            r.fail(GenerationCancelled("the request was cancelled before it was decoded"))
        if not self._pending:
            return []
        first = self._pending[0]
        batch, rows = [first], first.n_rows
        later = self._pending[1:]
        for r in [r for r in later if r.images] + [r for r in later if not r.images]:
            if r.key == first.key and rows + r.n_rows <= self.max_rows and _joins(batch, r):
                batch.append(r)
                rows += r.n_rows
        taken = {id(r) for r in batch}
        self._pending = [r for r in later if id(r) not in taken]
        return batch

    def _run(self, batch: list[BatchRequest]) -> None:
        try:
            self._decode(batch)
        except Exception as e:  # noqa: BLE001 - isolate the request that breaks generation
            if len(batch) == 1:
                batch[0].fail(e)
                return
            log.warning("batched generate of %d requests failed (%s); retrying each alone", len(batch), e)
            for r in batch:
                if r.finished:
                    continue
                if r.streamed:  # its client already has part of the text: a re-run would repeat it
                    r.fail(e)
                else:
                    r.rows = [None] * r.n_rows
                    r.logprobs = [[] for _ in range(r.n_rows)]
                    self._run([r])
        except BaseException as e:
            for r in batch:
                if not r.finished:
                    r.fail(e)
            raise


# ---------------------------------------------------------------------------------------------
# One batched generate()


def decode_batch(batch: list[BatchRequest]) -> None:
    """Decode every row of `batch` (same base model, any adapters) in one left-padded generate() call."""
    first = batch[0]
    rows_ids = [ids for req in batch for ids in req.prompt_ids for _ in range(req.copies)]
    width = max(len(ids) for ids in rows_ids)
    input_ids = torch.full((len(rows_ids), width), first.pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows_ids), width), dtype=torch.long)
    for r, ids in enumerate(rows_ids):  # left padding: every prompt ends at column width - 1
        input_ids[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, width - len(ids):] = 1
    for req in batch:
        req.batch_rows = len(rows_ids)
    sampling = _RowSampling(batch, width) if any(not r.settings.greedy or r.settings.adjusts for r in batch) else None
    monitor = _BatchMonitor(batch, width, sampling)
    config = GenerationConfig(
        max_new_tokens=max(b for req in batch for b in req.budgets), do_sample=False, num_beams=1,
        num_return_sequences=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
        eos_token_id=first.eos_ids, pad_token_id=first.pad_id)
    kwargs: dict[str, Any] = {}
    processors = [p for p in (_constraints(batch), sampling) if p is not None]  # the grammar masks come first
    if processors:
        kwargs["logits_processor"] = LogitsProcessorList(processors)
    started = time.perf_counter()
    # Image rows and text rows of one VLM decode together: each row's images (none for a text row)
    # in row order, padded to one tensor layout (ml/vision.batch_pixels).
    rows_images = [imgs for req in batch for imgs in (req.images or [[]] * len(req.prompt_ids))
                   for _ in range(req.copies)]
    images_B = None
    if any(rows_images):
        pixels, images_B = vision.batch_pixels(rows_images)
        kwargs.update(pixels)
    if getattr(first.model, "serves_adapters", False):  # a MultiLoraModel: each row names its adapter
        kwargs["adapters_B"] = [req.adapter for req in batch for _ in range(req.n_rows)]
        kwargs["images_B"] = images_B  # the vision encoder's inputs per row, for LoRA on the vision side
    with GENERATE_LOCK, torch.inference_mode():
        out = first.model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                                   stopping_criteria=StoppingCriteriaList([monitor]), **kwargs)
    monitor.sweep(out)
    log.debug("decoded %d requests, %d rows, prompt width %d, %d steps in %.3f s (arrivals spread over %.1f ms)",
              len(batch), len(rows_ids), width, out.shape[1] - width, time.perf_counter() - started,
              1000 * (max(r.enqueued for r in batch) - min(r.enqueued for r in batch)))


def _joins(batch: list[BatchRequest], r: BatchRequest) -> bool:
    """Whether r may join this batch (same model, room left): always, unless images would meet rows of
    several adapters on a model that cannot keep each image's LoRA apart (multi_lora.mixes_images)."""
    requests = [*batch, r]
    adapters = {q.adapter for q in requests}
    if len(adapters) == 1 or not any(q.images for q in requests):
        return True
    mixes = getattr(r.model, "mixes_images", None)
    return mixes is None or mixes(adapters)


def _constraints(batch: list[BatchRequest]):
    """A constraints.RowConstraints over the batch's rows if any request is constrained, else None."""
    rows = [c for req in batch for c in (req.constraints or [None] * len(req.prompt_ids)) for _ in range(req.copies)]
    if all(c is None for c in rows):
        return None
    return constraints.RowConstraints(rows, batch[0].tokenizer, batch[0].tok_lock, batch[0].eos_ids)


class _RowSampling(LogitsProcessor):
    """Per-request logit adjustments, logprobs, temperature / top_p and random streams in one batch.

    transformers' own sampling applies one temperature and top_p to the whole batch and draws
    every row from the global torch RNG, so a request's tokens would depend on its batch-mates.
    Here generate() runs greedy (argmax) and this processor, for each request's rows:
    1. adds its logit_bias and subtracts its presence / frequency penalties (ml/logits.py);
    2. if it asked for logprobs, keeps the log-softmax of those scores (before temperature and
       top_p) for _BatchMonitor, which records the logprob of the token actually picked;
    3. if it samples, applies transformers' TemperatureLogitsWarper / TopPLogitsWarper, draws the
       next token from the request's own torch.Generator (seeded with its seed) and leaves only
       that token finite, so argmax picks it. A greedy request's adjusted scores go to argmax.
    Requests with none of these are left untouched. A sampling request draws for all of its rows
    at every step, finished or not, so its random stream advances the same way whatever else is
    in the batch.
    """

    def __init__(self, batch: list[BatchRequest], width: int):
        self.width = width  # prompt columns (left-padded); generated tokens start here
        self.groups: list[tuple[slice, DecodeSettings, Any, LogitsProcessorList | None, torch.Generator | None]] = []
        # row -> (logprobs_V, top_values_K, top_ids_K) of the current step, for _BatchMonitor
        self.step_logprobs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        start = 0
        for req in batch:
            s = req.settings
            warpers = generator = None
            if not s.greedy:
                warpers = LogitsProcessorList([TemperatureLogitsWarper(float(s.temperature))])
                if s.top_p < 1.0:
                    warpers.append(TopPLogitsWarper(float(s.top_p)))
                generator = torch.Generator().manual_seed(s.seed)
            if warpers is not None or s.adjusts:
                self.groups.append((slice(start, start + req.n_rows), s, logits.bias_tensors(s.logit_bias), warpers,
                                    generator))
            start += req.n_rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.step_logprobs = {}
        for rows, s, bias, warpers, generator in self.groups:
            mine = logits.adjust(scores[rows].clone(), input_ids[rows, self.width:], bias, s.presence_penalty,
                                 s.frequency_penalty)
            if s.top_logprobs is not None:
                lp_R_V, top_values_R_K, top_ids_R_K = logits.distribution(mine, s.top_logprobs)
                for j in range(lp_R_V.shape[0]):
                    self.step_logprobs[rows.start + j] = (lp_R_V[j], top_values_R_K[j], top_ids_R_K[j])
            if warpers is not None:
                probs = torch.softmax(warpers(input_ids[rows], mine), dim=-1)
                picked = torch.multinomial(probs, num_samples=1, generator=generator)
                mine = torch.full_like(mine, float("-inf")).scatter_(1, picked, 0.0)
            scores[rows] = mine
        return scores


class _BatchMonitor(StoppingCriteria):
    """Called by generate() after every step with the sequences so far. Per row: feed a streamed
    request its new token, and end the row on EOS, its own budget, one of its stop strings or a
    cancelled stream. A request whose rows are all done is handed back at once. For a request
    that asked for logprobs, the picked token's logprob (from `sampling`) is recorded first."""

    def __init__(self, batch: list[BatchRequest], width: int, sampling: "_RowSampling | None" = None):
        self.width, self.sampling = width, sampling
        self.rows: list[tuple[BatchRequest, int, int]] = []  # (request, row within it, budget)
        for req in batch:
            for j in range(req.n_rows):
                self.rows.append((req, j, req.budgets[j // req.copies]))
        self.ended = [False] * len(self.rows)
        self.eos = set(batch[0].eos_ids)
        self.tokenizer, self.tok_lock = batch[0].tokenizer, batch[0].tok_lock
        # A stop string of L characters spans at most about L tokens; decode a safe tail only.
        self.windows = {id(req): 2 * max((len(s) for s in req.settings.stop or []), default=0) + 8 for req in batch}

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        n_new = input_ids.shape[1] - self.width
        last = input_ids[:, -1].tolist()
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        with self.tok_lock:
            for r, (req, j, budget) in enumerate(self.rows):
                if self.ended[r]:
                    done[r] = True
                    continue
                token = last[r]
                if self.sampling is not None and r in self.sampling.step_logprobs:
                    req.logprobs[j].append(logits.step(*self.sampling.step_logprobs[r], token))
                if req.sink is not None:
                    req.streamed = True
                    req.sink.put(torch.tensor([token]))
                hit_eos = token in self.eos
                if (hit_eos or n_new >= budget or (req.cancel is not None and req.cancel.is_set())
                        or self._stop_string(input_ids[r], req)):
                    self.ended[r] = done[r] = True
                    req.row_done(j, input_ids[r, self.width:].tolist(), hit_eos)
        return done

    def _stop_string(self, row: torch.LongTensor, req: BatchRequest) -> bool:
        if not req.settings.stop:
            return False
        lo = max(self.width, row.shape[0] - self.windows[id(req)])
        tail = self.tokenizer.decode(row[lo:], skip_special_tokens=True)
        return any(s in tail for s in req.settings.stop)

    def sweep(self, out: torch.LongTensor) -> None:
        """Rows generate() ended without this monitor (e.g. a model whose generate stops on its
        own): their tokens up to the first EOS (kept) or padding (dropped)."""
        pad = self.rows[0][0].pad_id
        for r, (req, j, _) in enumerate(self.rows):
            if self.ended[r]:
                continue
            ids, hit_eos = [], False
            for t in out[r, self.width:].tolist():
                if t in self.eos:
                    ids.append(t)
                    hit_eos = True
                    break
                if t == pad:
                    break
                ids.append(t)
            self.ended[r] = True
            with self.tok_lock:
                req.row_done(j, ids, hit_eos)
