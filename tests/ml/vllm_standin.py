"""A small stand-in for a vLLM OpenAI-compatible server, for tests on machines without a GPU.

vLLM has no CPU wheel here, so tests of ml/vllm_backend.py run against this: a FastAPI app that
speaks exactly the vLLM endpoints ModelMill uses, with vLLM's request and response shapes
(vllm/entrypoints/openai: CompletionRequest, LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest,
/v1/models with LoRA entries whose `parent` is the base), and really generates with
transformers + PEFT (it is a stand-in for vLLM, not a mock of ModelMill):
- GET  /v1/models
- POST /v1/load_lora_adapter   {lora_name, lora_path}   (400 if the name is already loaded)
- POST /v1/unload_lora_adapter {lora_name}
- POST /v1/completions         prompt as token ids or text, model = base or LoRA name, n, seed,
  temperature, top_p, max_tokens, stop, stop_token_ids, return_token_ids, skip_special_tokens,
  stream (+ stream_options.include_usage), structured_outputs (json / json_object / grammar, honoured
  with llguidance, as vLLM's "guidance" backend does); `choices[].token_ids` when return_token_ids.
  logit_bias, presence_penalty, frequency_penalty (OpenAI's semantics, over the output tokens, as
  vLLM applies them) and logprobs (+ return_tokens_as_token_ids): vLLM's CompletionLogProbs per
  choice (and per stream chunk), the model's raw logprobs, as vLLM's default logprobs_mode gives.
- GET  /standin/structured_outputs   every structured_outputs it was sent (tests check the passthrough)
A request field vLLM has but this stand-in does not implement is refused with a 400 naming it,
so ModelMill cannot come to depend on something only a real vLLM would honour silently.

    python tests/ml/vllm_standin.py --model DIR --port PORT

Tests start it with running(model_dir) (a subprocess on 127.0.0.1, stopped afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

import torch
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoModelForCausalLM, AutoTokenizer


class LoadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str


class UnloadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_int_id: int | None = None


class StreamOptions(BaseModel):
    include_usage: bool | None = None


class StructuredOutputsParams(BaseModel):
    """vLLM's guided decoding (sampling_params.StructuredOutputsParams): the fields ModelMill sends."""
    model_config = ConfigDict(extra="forbid")
    json_: dict | str | None = Field(default=None, alias="json")
    json_object: bool | None = None
    grammar: str | None = None
    disable_any_whitespace: bool = False

    def matcher(self, tokenizer):
        """An llguidance matcher for the constraint (vLLM's "guidance" backend is llguidance too)."""
        import llguidance
        import llguidance.hf

        style = {"whitespace_flexible": False} if self.disable_any_whitespace else None
        if self.grammar is not None:
            grammar = llguidance.LLMatcher.grammar_from_lark(self.grammar)
        else:
            schema = self.json_ if self.json_ is not None else {"type": "object"}
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=style)
        return llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer), grammar)


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # see the module docstring
    model: str
    prompt: list[int] | str
    max_tokens: int | None = 16
    n: int = 1
    seed: int | None = None
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    return_token_ids: bool | None = None
    skip_special_tokens: bool = True
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    structured_outputs: StructuredOutputsParams | None = None
    logit_bias: dict[str, float] | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logprobs: int | None = None
    return_tokens_as_token_ids: bool | None = None


def error(status: int, message: str, kind: str = "BadRequestError") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": status}},
                        status_code=status)


def create_app(model_dir: str) -> FastAPI:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    loras: dict[str, str] = {}  # name -> path
    lock = threading.Lock()  # one generate() / adapter change at a time
    app = FastAPI()
    created = int(time.time())

    received: list[dict] = []  # every structured_outputs field sent, for tests of the passthrough

    @app.get("/standin/structured_outputs")
    def structured_outputs_received():
        return received

    @app.get("/v1/models")
    def list_models():
        cards = [{"id": model_dir, "object": "model", "created": created, "owned_by": "vllm", "root": model_dir,
                  "parent": None, "max_model_len": model.config.max_position_embeddings}]
        cards += [{"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": path,
                   "parent": model_dir} for name, path in loras.items()]
        return {"object": "list", "data": cards}

    @app.post("/v1/load_lora_adapter")
    def load_lora_adapter(req: LoadLoRAAdapterRequest):
        nonlocal model
        from peft import PeftModel

        with lock:
            if req.lora_name in loras:
                return error(400, f"The lora adapter '{req.lora_name}' has already been loaded.",
                             "InvalidUserInput")
            if isinstance(model, PeftModel):
                model.load_adapter(req.lora_path, adapter_name=req.lora_name)
            else:
                model = PeftModel.from_pretrained(model, req.lora_path, adapter_name=req.lora_name)
            model.eval()
            loras[req.lora_name] = req.lora_path
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    def unload_lora_adapter(req: UnloadLoRAAdapterRequest):
        with lock:
            if req.lora_name not in loras:
                return error(404, f"The lora adapter '{req.lora_name}' cannot be found.", "NotFoundError")
            model.delete_adapter(req.lora_name)
            del loras[req.lora_name]
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    @app.post("/v1/completions")
    def completions(req: CompletionRequest):
        if req.model != model_dir and req.model not in loras:
            return error(404, f"The model `{req.model}` does not exist.", "NotFoundError")
        ids = req.prompt if isinstance(req.prompt, list) else tokenizer(req.prompt)["input_ids"]
        if len(ids) + (req.max_tokens or 0) > model.config.max_position_embeddings:
            return error(400, f"This model's maximum context length is {model.config.max_position_embeddings} "
                              f"tokens. However, you requested {len(ids) + (req.max_tokens or 0)} tokens.")
        if req.structured_outputs is not None:
            received.append(req.structured_outputs.model_dump(by_alias=True, exclude_none=True))
        with lock:
            outputs = [decode(req, ids, j) for j in range(req.n)]
        rid, now = "cmpl-" + uuid.uuid4().hex, int(time.time())
        usage = {"prompt_tokens": len(ids), "completion_tokens": sum(len(o["token_ids"]) for o in outputs),
                 "total_tokens": len(ids) + sum(len(o["token_ids"]) for o in outputs)}
        if req.stream:
            return StreamingResponse(stream(req, rid, now, ids, outputs, usage), media_type="text/event-stream")
        choices = [{"index": j, "text": o["text"], "logprobs": logprobs_of(req, o["steps"]),
                    "finish_reason": o["finish_reason"],
                    "stop_reason": o["stop_reason"], "token_ids": o["token_ids"] if req.return_token_ids else None,
                    "prompt_logprobs": None} for j, o in enumerate(outputs)]
        return {"id": rid, "object": "text_completion", "created": now, "model": req.model, "choices": choices,
                "usage": usage, "prompt_token_ids": ids if req.return_token_ids else None}

    def decode(req: CompletionRequest, ids: list[int], j: int) -> dict:
        """One choice, as vLLM produces it: stops at a stop token (kept in token_ids) or once a
        stop string appears (the text cut before it, token_ids up to the token completing it)."""
        from peft import PeftModel

        greedy = not req.temperature
        generator = torch.Generator().manual_seed((req.seed if req.seed is not None else time.time_ns()) + j)
        eos = set(req.stop_token_ids or []) | {tokenizer.eos_token_id}
        stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
        out: list[int] = []
        past, step_ids = None, torch.tensor([ids])
        kwargs = {}
        if isinstance(model, PeftModel):
            kwargs["adapter_names"] = [req.model if req.model in loras else "__base__"]
        finish, stop_reason = "length", None
        steps: list[tuple[int, torch.Tensor]] = []  # (token, raw logprobs at its position)
        matcher = req.structured_outputs.matcher(tokenizer) if req.structured_outputs else None
        with torch.inference_mode():
            for _ in range(req.max_tokens or 16):
                res = model(input_ids=step_ids, past_key_values=past, use_cache=True, **kwargs)
                past, logits = res.past_key_values, res.logits[0, -1]
                raw = torch.log_softmax(logits.float(), dim=-1)  # vLLM's default logprobs_mode: raw_logprobs
                logits = penalised(logits.clone(), req, out)
                if matcher is not None:
                    logits = guided(matcher, logits)
                token = int(logits.argmax()) if greedy else sample(logits, req, generator)
                out.append(token)
                steps.append((token, raw))
                if matcher is not None:
                    matcher.consume_token(token)
                step_ids = torch.tensor([[token]])
                if token in eos:
                    finish, stop_reason = "stop", (None if token == tokenizer.eos_token_id else token)
                    break
                text = tokenizer.decode(out, skip_special_tokens=req.skip_special_tokens)
                hit = [s for s in stops if s in text]
                if hit:
                    finish, stop_reason = "stop", hit[0]
                    break
        text = tokenizer.decode(out, skip_special_tokens=req.skip_special_tokens)
        if isinstance(stop_reason, str):
            text = text[:text.find(stop_reason)]
        return {"text": text, "token_ids": out, "finish_reason": finish, "stop_reason": stop_reason, "steps": steps}

    def stream(req, rid, now, ids, outputs, usage):
        def chunk(choices, **extra):
            return "data: " + json.dumps({"id": rid, "object": "text_completion", "created": now, "model": req.model,
                                          "choices": choices, **extra}) + "\n\n"
        for j, o in enumerate(outputs):
            sent = ""
            for k, token in enumerate(o["token_ids"]):
                last = k == len(o["token_ids"]) - 1
                text = o["text"] if last else tokenizer.decode(o["token_ids"][:k + 1],
                                                               skip_special_tokens=req.skip_special_tokens)
                delta, sent = text[len(sent):] if text.startswith(sent) else "", text
                extra = {"prompt_token_ids": ids} if (req.return_token_ids and j == 0 and k == 0) else {}
                yield chunk([{"index": j, "text": delta, "logprobs": logprobs_of(req, o["steps"][k:k + 1]),
                              "finish_reason": o["finish_reason"] if last else None,
                              "stop_reason": o["stop_reason"] if last else None,
                              "token_ids": [token] if req.return_token_ids else None}], **extra)
        if req.stream_options and req.stream_options.include_usage:
            yield chunk([], usage=usage)
        yield "data: [DONE]\n\n"

    return app


def penalised(logits: torch.Tensor, req: CompletionRequest, out: list[int]) -> torch.Tensor:
    """logit_bias added, presence / frequency penalties over the output tokens so far subtracted."""
    for token, bias in (req.logit_bias or {}).items():
        logits[int(token)] += bias
    for token in set(out):
        logits[token] -= (req.frequency_penalty or 0.0) * out.count(token) + (req.presence_penalty or 0.0)
    return logits


def logprobs_of(req: CompletionRequest, steps: list[tuple[int, torch.Tensor]]) -> dict | None:
    """vLLM's CompletionLogProbs: the sampled token's logprob and a dict of the top `logprobs`
    tokens plus the sampled one; tokens as "token_id:N" with return_tokens_as_token_ids."""
    if req.logprobs is None:
        return None
    if not req.return_tokens_as_token_ids:
        raise ValueError("the stand-in only answers logprobs with return_tokens_as_token_ids")
    name = "token_id:{}".format
    top = []
    for token, raw in steps:
        values, ids = torch.topk(raw, req.logprobs) if req.logprobs else (raw[:0], raw[:0].long())
        entry = {name(int(i)): float(v) for i, v in zip(ids.tolist(), values.tolist())}
        entry[name(token)] = float(raw[token])
        top.append(entry)
    return {"text_offset": [0] * len(steps), "token_logprobs": [float(raw[t]) for t, raw in steps],
            "tokens": [name(t) for t, _ in steps], "top_logprobs": top}


def guided(matcher, logits: torch.Tensor) -> torch.Tensor:
    """logits with every token the grammar does not allow next set to -inf."""
    mask = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)
    allowed = ((mask.unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1).bool().reshape(-1)
    allowed = torch.nn.functional.pad(allowed, (0, max(0, logits.shape[0] - allowed.shape[0])))[:logits.shape[0]]
    return logits.masked_fill(~allowed, float("-inf"))


def sample(logits: torch.Tensor, req: CompletionRequest, generator: torch.Generator) -> int:
    probs = torch.softmax(logits / req.temperature, dim=-1)
    if req.top_p is not None and req.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < req.top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


@contextlib.contextmanager
def running(model_dir: Path, start_timeout_s: float = 180) -> Iterator[str]:
    """Run the stand-in for model_dir in a subprocess on a free 127.0.0.1 port; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--model", str(model_dir), "--port", str(port)],
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            assert proc.poll() is None, "the vLLM stand-in exited while starting"
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the vLLM stand-in did not start"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    uvicorn.run(create_app(args.model), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
