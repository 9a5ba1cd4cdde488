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
  and parsing, usage); requests for the same base share a batch whatever their adapters, and a VLM's
  requests with images share it with its text requests (docs/vision.md). Generation
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

Layout: params.py (SamplingParams and the result shapes), prompts.py (rendering, budgets, stop strings,
streaming rules), sampler.py (the Sampler: model cache, batched generate and stream).
"""

from modelmill.ml.sampling.params import Choice, GenerationResult, SamplingParams, StreamEvent
from modelmill.ml.sampling.sampler import Loader, Sampler, end_token_ids
from modelmill.ml.types import DEFAULT_MAX_TOKENS  # the budget when max_tokens is None

__all__ = ["DEFAULT_MAX_TOKENS", "Choice", "GenerationResult", "Loader", "Sampler", "SamplingParams", "StreamEvent",
           "end_token_ids"]
