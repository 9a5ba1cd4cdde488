"""The vLLM inference backend: ModelMill renders, budgets and parses; a vLLM server decodes.

ml.sampling.Sampler(backend=VLLMBackend(url)) runs every request through the same code as the
transformers backend (chat template rendering, tool-choice prefill, context budget, stop strings,
tool-call parsing, usage) and only swaps where the tokens come from: each BatchRequest becomes
one `POST /v1/completions` per prompt to a vLLM OpenAI-compatible server, with
- `prompt` = ModelMill's own prompt token ids (so vLLM never applies a chat template of its own),
- `model` = the base as vLLM serves it, or the LoRA name of the fine-tuned adapter, loaded on
  first use with `POST /v1/load_lora_adapter {lora_name, lora_path}` (vLLM must run with
  `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; see docs/serving.md), so all
  adapters of the base share one copy of it and vLLM's multi-LoRA batching,
- max_tokens = ModelMill's budget, n = rows per prompt, seed / temperature / top_p / stop as
  the request asked, stop_token_ids = the EOS ids ModelMill stops on,
- `structured_outputs` = the request's constraint (ml/constraints.py) in vLLM's terms: `json` (a
  json_schema response_format), `json_object`, or `grammar` (a forced tool call, an llguidance Lark
  grammar: run vLLM with `--structured-outputs-config.backend guidance`; docs/structured-outputs.md),
- logit_bias / presence_penalty / frequency_penalty as the request asked (vLLM applies OpenAI's
  semantics), and with logprobs, `logprobs: k` + `return_tokens_as_token_ids: true`: each token's
  logprob and its top k come back keyed by token id and are turned into the same StepLogprobs
  as the transformers backend records. vLLM reports the model's raw logprobs by default (before
  the bias, penalties and any constraint; its `--logprobs-mode` changes that), docs/api-parameters.md,
- `return_token_ids: true`: the generated token ids come back and are decoded here, so text,
  stop-string cuts, finish_reason and completion_tokens are computed exactly as for
  transformers. Streams use `stream: true` and hand each chunk's token ids to the request's
  streamer, so held-back stop strings and tool-call markup behave the same as well.
vLLM batches concurrent requests itself (continuous batching), so requests are sent at once
from a small thread pool rather than through ml/batching.py's collection window.

Errors: a 4xx answer from vLLM becomes InvalidRequestError with vLLM's message; a server that
cannot be reached or answers 5xx becomes InferenceBackendError (502).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from modelmill.errors import InvalidRequestError, ModelMillError
from modelmill.ml import ml_imports

with ml_imports():  # not alongside another thread's first import of the stack (see modelmill.ml)
    import torch
    # Straight from the submodules: transformers' lazy top-level __getattr__ is not thread-safe.
    from transformers.generation.configuration_utils import GenerationConfig
    from transformers.models.auto.configuration_auto import AutoConfig

from modelmill.ml import batching, logits, models
from modelmill.ml.multi_lora import DEFAULT_MAX_ADAPTERS, AdapterCache

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0  # one completion request (connect + whole answer)
MAX_IN_FLIGHT = 64  # completion requests sent to vLLM at once (it batches them)


class InferenceBackendError(ModelMillError, ConnectionError):
    """The inference server could not be reached or failed (not the caller's fault)."""

    status = 502
    type = "server_error"
    code = "inference_backend_error"


class VLLMHost(AdapterCache):
    """One base model as a vLLM server serves it, with LoRA adapters registered by name."""

    def __init__(self, backend: "VLLMBackend", served_name: str, config: Any, generation_config: Any,
                 max_adapters: int = DEFAULT_MAX_ADAPTERS):
        super().__init__(max_adapters)
        self.backend, self.served_name = backend, served_name
        self.config, self.generation_config = config, generation_config
        self.paths: dict[str, Path] = {}  # LoRA name -> adapter dir, to register it again (reload)

    def eval(self) -> "VLLMHost":  # sampling.sampler._prepare calls model.eval(); nothing to do here
        return self

    def _load_adapter(self, adapter_dir: Path) -> str:
        # The name depends on the path only, so a ModelMill restart (or a second process) reuses
        # an adapter the server already has.
        name = "mm-" + hashlib.sha256(str(adapter_dir).encode()).hexdigest()[:16]
        self.backend.load_lora(name, adapter_dir)
        self.paths[name] = adapter_dir
        return name

    def _drop_adapter(self, name: str) -> None:
        self.backend.unload_lora(name)
        self.paths.pop(name, None)

    def reload(self, name: str) -> None:
        """Register a LoRA again that the server no longer knows (it was restarted)."""
        self.backend.load_lora(name, self.paths[name])


class VLLMBackend:
    """Client of one vLLM OpenAI-compatible server (base_url like http://127.0.0.1:8000)."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_adapters: int = DEFAULT_MAX_ADAPTERS, process: Any = None):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.max_adapters = max_adapters
        self.process = process  # the child `vllm serve` this backend started, if any (inference.VLLMServer)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s,
                                  limits=httpx.Limits(max_connections=MAX_IN_FLIGHT))
        self._pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="modelmill-vllm")
        self.history: deque[tuple[int, int]] = deque(maxlen=1000)  # (1, rows) per request sent
        self._queued = 0
        self._queued_lock = threading.Lock()

    # -- what the Sampler calls ------------------------------------------------------------------

    @property
    def queued(self) -> int:
        with self._queued_lock:
            return self._queued

    def load_base(self, base_dir: Path) -> tuple[VLLMHost, Any]:
        """(host, tokenizer) for a base directory the server serves: only the tokenizer and config
        are read here; the weights live in vLLM."""
        served = self._served_name(base_dir)
        tokenizer = models.load_tokenizer(base_dir)  # the chat template load_model would give it
        config = AutoConfig.from_pretrained(base_dir, trust_remote_code=False)
        try:
            generation_config = GenerationConfig.from_pretrained(base_dir)
        except OSError:  # no generation_config.json
            generation_config = None
        return VLLMHost(self, served, config, generation_config, self.max_adapters), tokenizer

    def submit(self, request: batching.BatchRequest) -> batching.BatchRequest:
        """Send each prompt of `request` to vLLM at once (one pool task per prompt, so vLLM batches
        them); rows are filled as answers come back."""
        self.history.append((1, request.n_rows))
        if request.sink is not None:  # streams are single-row requests
            tasks = [lambda: self._stream_row(request)]
        else:
            tasks = [lambda i=i: self._complete_prompt(request, i) for i in range(len(request.prompt_ids))]
        with self._queued_lock:
            self._queued += len(tasks)
        for task in tasks:
            self._pool.submit(self._run, request, task)
        return request

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        if self.process is not None:
            self.process.stop()

    # -- adapters ----------------------------------------------------------------------------------

    def load_lora(self, name: str, adapter_dir: Path) -> None:
        r = self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(adapter_dir)})
        if r.status_code == 400 and "already" in r.text.lower():
            return  # loaded earlier (by this or another ModelMill process): same name, same path
        self._check(r, "loading LoRA adapter")

    def unload_lora(self, name: str) -> None:
        r = self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if r.status_code >= 400:
            log.warning("vLLM did not unload LoRA adapter %s: %s %s", name, r.status_code, r.text[:200])

    def _served_name(self, base_dir: Path) -> str:
        """The name vLLM serves base_dir under: a /v1/models entry without a parent whose id or
        root is that directory (or its name)."""
        r = self._get("/v1/models")
        self._check(r, "listing models")
        bases = [m for m in r.json().get("data", []) if not m.get("parent")]
        wanted = {str(base_dir), str(base_dir.resolve()), base_dir.name}
        for m in bases:
            if m.get("id") in wanted or m.get("root") in wanted:
                return m["id"]
        raise InvalidRequestError(
            f"the vLLM server at {self.base_url} serves {[m.get('id') for m in bases]}, not {base_dir}; "
            f"start it with `vllm serve {base_dir} --enable-lora`", param="model")

    # -- completions -------------------------------------------------------------------------------

    def _run(self, request: batching.BatchRequest, task) -> None:
        with self._queued_lock:
            self._queued -= 1
        if request.finished:  # another prompt of this request failed already
            return
        try:
            task()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            if not request.finished:
                request.fail(e if isinstance(e, ModelMillError) else
                             InferenceBackendError(f"vLLM request failed: {e}"))

    def _body(self, request: batching.BatchRequest, i: int) -> dict:
        s = request.settings
        host: VLLMHost = request.model
        body = {"model": request.adapter or host.served_name, "prompt": request.prompt_ids[i],
                "max_tokens": request.budgets[i], "n": request.copies, "seed": s.seed,
                "temperature": 0.0 if s.greedy else s.temperature, "top_p": 1.0 if s.greedy else s.top_p,
                "stop_token_ids": request.eos_ids, "return_token_ids": True, "skip_special_tokens": True}
        if s.stop:
            body["stop"] = s.stop
        if s.logit_bias:
            body["logit_bias"] = {str(t): b for t, b in s.logit_bias.items()}
        if s.presence_penalty or s.frequency_penalty:
            body.update(presence_penalty=s.presence_penalty, frequency_penalty=s.frequency_penalty)
        if s.top_logprobs is not None:
            body.update(logprobs=s.top_logprobs, return_tokens_as_token_ids=True)
        constraint = request.constraints[i] if request.constraints else None
        if constraint is not None:  # response_format / a forced tool call: vLLM's own guided decoding
            body["structured_outputs"] = constraint.structured_outputs
        return body

    def _complete_prompt(self, request: batching.BatchRequest, i: int) -> None:
        r = self._post("/v1/completions", self._body(request, i))
        if self._lost_adapter(r, request):
            r = self._post("/v1/completions", self._body(request, i))
        self._check(r, "completion")
        choices = sorted(r.json()["choices"], key=lambda c: c["index"])
        if len(choices) != request.copies:
            raise InferenceBackendError(f"vLLM answered {len(choices)} choices, asked for {request.copies}")
        for j, choice in enumerate(choices):
            ids = self._token_ids(request, choice)
            request.logprobs[i * request.copies + j] += _steps(request, choice)
            request.row_done(i * request.copies + j, ids, bool(ids) and ids[-1] in request.eos_ids)

    def _stream_row(self, request: batching.BatchRequest) -> None:
        """A single-row streamed request: feed each chunk's token ids to the request's streamer."""
        body = dict(self._body(request, 0), stream=True)
        ids: list[int] = []
        for attempt in (1, 2):
            with self._http.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code >= 400:
                    r.read()
                    if attempt == 1 and self._lost_adapter(r, request):
                        continue
                    self._check(r, "completion")
                self._read_stream(r, request, ids)
                break
        with request.tok_lock:
            request.row_done(0, ids, bool(ids) and ids[-1] in request.eos_ids)

    def _read_stream(self, r: httpx.Response, request: batching.BatchRequest, ids: list[int]) -> None:
        for line in r.iter_lines():
            if request.cancel is not None and request.cancel.is_set():
                return  # the consumer stopped reading (or hit a stop string): closing ends the row in vLLM
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data:"):])
            if "error" in chunk:
                raise InferenceBackendError(f"vLLM stream failed: {chunk['error']}")
            for choice in chunk.get("choices", []):
                new = self._token_ids(request, choice)
                request.logprobs[0] += _steps(request, choice)  # before the text reaches the consumer
                if new:
                    ids += new
                    with request.tok_lock:
                        request.streamed = True
                        request.sink.put(torch.tensor(new, dtype=torch.long))

    def _lost_adapter(self, r: httpx.Response, request: batching.BatchRequest) -> bool:
        """True (after registering it again) when vLLM answered 404 for the request's LoRA: the
        server was restarted since ModelMill loaded it."""
        if r.status_code != 404 or request.adapter is None:
            return False
        log.warning("vLLM does not know LoRA %s any more; loading it again", request.adapter)
        request.model.reload(request.adapter)
        return True

    @staticmethod
    def _token_ids(request: batching.BatchRequest, choice: dict) -> list[int]:
        ids = choice.get("token_ids")
        if ids is None:  # a server without return_token_ids: re-tokenize the text (close, not exact)
            with request.tok_lock:
                ids = request.tokenizer(choice.get("text", ""), add_special_tokens=False)["input_ids"]
        return [int(t) for t in ids]

    # -- HTTP --------------------------------------------------------------------------------------

    def _post(self, path: str, body: dict) -> httpx.Response:
        try:
            return self._http.post(path, json=body)
        except httpx.HTTPError as e:
            raise InferenceBackendError(f"vLLM server at {self.base_url} unreachable: {e}") from e

    def _get(self, path: str) -> httpx.Response:
        try:
            return self._http.get(path)
        except httpx.HTTPError as e:
            raise InferenceBackendError(f"vLLM server at {self.base_url} unreachable: {e}") from e

    def _check(self, r: httpx.Response, what: str) -> None:
        if r.status_code < 400:
            return
        try:  # vLLM answers {"error": {"message": ...}} (newer) or {"object": "error", "message": ...}
            doc = r.json()
            error = doc.get("error") if isinstance(doc, dict) else None
            message = (error.get("message") if isinstance(error, dict) else error) or doc.get("message") or r.text
        except (ValueError, AttributeError):
            message = r.text
        if 400 <= r.status_code < 500:
            raise InvalidRequestError(f"vLLM refused the {what}: {message}")
        raise InferenceBackendError(f"vLLM failed the {what} ({r.status_code}): {message}")


def _steps(request: batching.BatchRequest, choice: dict) -> list[logits.StepLogprob]:
    """vLLM's completions logprobs (tokens and top_logprobs keys as "token_id:N") -> StepLogprobs;
    [] when the request did not ask for logprobs. vLLM's top dict may hold k + 1 entries (the
    sampled token besides the top k): the k most likely are kept."""
    k = request.settings.top_logprobs
    lp = choice.get("logprobs")
    if k is None or not lp:
        return []
    out = []
    for token, value, top in zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], lp.get("top_logprobs") or []):
        ranked = sorted(((_token_id(t), v) for t, v in (top or {}).items()), key=lambda tv: -tv[1])[:k]
        out.append(logits.StepLogprob(_token_id(token), logits.UNLIKELY if value is None else float(value),
                                      tuple(ranked)))
    return out


def _token_id(token: str) -> int:
    if not token.startswith("token_id:"):
        raise InferenceBackendError(f"vLLM sent logprobs for token {token!r}, not as token_id:N "
                                    "(return_tokens_as_token_ids not honoured)")
    return int(token[len("token_id:"):])
