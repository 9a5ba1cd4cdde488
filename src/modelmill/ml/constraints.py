"""Grammar-constrained decoding: structured outputs (`response_format`) and forced tool calls.

A Constraint is what every completion of one request must match, as an llguidance grammar:
- `response_format` {"type": "json_schema", "json_schema": {"schema": ...}}: JSON valid under the schema;
- {"type": "json_object"}: any JSON object;
- a forced tool call (tool_choice "required" or a named function): the rest of the call after the
  family's prefill (ml/sampling/prompts.py `render`), i.e. the function name (one of the tools) and its
  arguments as JSON valid under that tool's `parameters`, closed in the family's format
  (chat_families.Family.call_suffix), so the call always parses;
- `tools` with a `strict: true` function under tool_choice "auto" (or none given): free text, or tool
  calls in the family's format whose arguments follow a strict tool's schema (for_auto_tools).

The transformers sampler applies it per row (RowConstraints, a LogitsProcessor that ml/batching.py
puts in front of the per-row sampling): every step, each constrained row's logits outside the
grammar's allowed tokens become -inf, then the row samples (or takes the argmax) as usual. Rows of
other requests in the same batch are untouched. The vLLM backend sends the same constraint to the
server as vLLM's `structured_outputs` (ml/vllm_backend.py).

Why llguidance (1.9.1) and not xgrammar: llguidance builds a schema's grammar lazily, in
milliseconds, with no per-schema compile step to cache (every request here may bring a new schema),
computes a token mask in under a millisecond for SmolLM2's 49k-token vocabulary on CPU (development
runs; bench/bench_structured.py reports it), and takes Lark
grammars with embedded JSON schemas (`%json{...}`), which is exactly a tool call: fixed markup around
schema-valid arguments. It is a small dependency-free abi3 wheel (no torch or CUDA pin, so the CPU
install stays as it is) and is one of vLLM's own structured-output backends ("guidance").

JSON is generated compactly (", " and ": " separators, no free whitespace): with free whitespace an
untrained or weak model can emit blanks until its token budget runs out, which never parses.
"""

from __future__ import annotations

import copy
import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelmill.errors import InvalidRequestError
from modelmill.ml import ml_imports

with ml_imports():
    import llguidance  # not llguidance.torch: its import runs torch.compile's setup (~2 s)
    import torch
    from transformers.generation.logits_process import LogitsProcessor

# The JSON layout every constrained JSON value uses (see the module docstring).
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
NO_ARGS_SCHEMA = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class Constraint:
    """What each completion of a request must match."""

    grammar: str  # llguidance's serialized grammar (LLMatcher input)
    structured_outputs: dict  # the same constraint as vLLM's /v1/completions `structured_outputs` field
    param: str  # the request field an error about this constraint names


# ---------------------------------------------------------------- building (request time, no tokenizer)


def from_response_format(response_format: Any, param: str = "response_format") -> Constraint | None:
    """The constraint for an OpenAI `response_format` (None for absent or {"type": "text"}).
    A malformed format or a schema llguidance cannot compile raises InvalidRequestError naming `param`."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequestError(f"{param} must be an object with a 'type'", param=param)
    kind = response_format.get("type")
    unknown = sorted(set(response_format) - ({"type", "json_schema"} if kind == "json_schema" else {"type"}))
    if kind in ("text", "json_object", "json_schema") and unknown:  # as OpenAI answers unknown fields
        raise InvalidRequestError(f"Unrecognized request argument supplied: {param}.{unknown[0]}", param=param)
    if kind == "text":
        return None
    if kind == "json_object":
        grammar = _json_grammar({"type": "object"}, param)
        return Constraint(grammar, {"json_object": True, "disable_any_whitespace": True}, param)
    if kind != "json_schema":
        raise InvalidRequestError(f"{param}.type must be 'text', 'json_object' or 'json_schema', not {kind!r}",
                                  param=param)
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequestError(f"{param}.json_schema must be an object with a 'name' and a 'schema'",
                                  param=param)
    unknown = sorted(set(spec) - {"name", "description", "schema", "strict"})
    if unknown:
        raise InvalidRequestError(f"Unrecognized request argument supplied: {param}.json_schema.{unknown[0]}",
                                  param=param)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"Missing required parameter: '{param}.json_schema.name'.", param=param)
    if spec.get("strict") is not None and not isinstance(spec.get("strict"), bool):
        raise InvalidRequestError(f"{param}.json_schema.strict must be a boolean", param=param)
    schema = spec.get("schema", {"type": "object"})  # OpenAI: no schema means any JSON object
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"Invalid schema for response_format '{name}': the schema must be an object",
                                  param=param)
    grammar = _json_grammar(schema, param, f"Invalid schema for response_format '{name}'")
    return Constraint(grammar, {"json": schema, "disable_any_whitespace": True}, param)


def for_tool_call(tools: list[dict], forced_name: str | None, *, hf_messages: bool, args_key: str,
                  call_suffix: str) -> Constraint:
    """The rest of a forced tool call after the family's prefill (chat_families.Family.prefill):
    for a named function ` {args}` + suffix, else `name", "arguments": {args}` + suffix for one
    of the tools. Each tool's arguments follow its `parameters` schema (strict or not: a forced
    call that does not parse is worth nothing); a schema that cannot compile raises
    InvalidRequestError naming tools[i].function.parameters."""
    alternatives = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") or {}
        name = fn.get("name")
        if not isinstance(name, str) or (forced_name is not None and name != forced_name):
            continue
        schema = fn.get("parameters") or NO_ARGS_SCHEMA
        param = f"tools[{i}].function.parameters"
        if not isinstance(schema, dict):
            raise InvalidRequestError(f"{param} must be a JSON schema object", param=param)
        schema = _closed(schema)
        _json_grammar(schema, param, f"Invalid schema for function '{name}'")  # names the tool on error
        args = "%json" + json.dumps(_styled(schema), ensure_ascii=False)
        if forced_name is not None:  # prefill ends at '"arguments":' (+ ' ' for ModelMill's ChatML)
            head = " " if hf_messages else ""
        else:  # prefill ends inside the name string: '{"name": "'
            head = json.dumps(name, ensure_ascii=False)[1:-1] + f'", "{args_key}": '
        alternatives.append(f"{_lark_str(head)} {args} {_lark_str(call_suffix)}" if head else
                            f"{args} {_lark_str(call_suffix)}")
    if not alternatives:
        raise InvalidRequestError("tool_choice names no function in tools", param="tool_choice")
    lark = "start: " + "\n     | ".join(alternatives) + "\n"
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise InvalidRequestError(f"Invalid tool schema: {error}", param="tools")
    return Constraint(grammar, {"grammar": lark}, "tools")


def for_tools(tools: list[dict] | None, mode: str, forced_name: str | None, family, tokenizer) -> Constraint | None:
    """The grammar a request's tool calls decode under (`mode` and `forced_name` from ml/sampling/prompts.py's
    tool_mode, `family` a chat_families.Family): the rest of a forced call for "required", text or
    calls when a tool is strict under "auto", else None."""
    if mode == "required":
        return for_tool_call(tools, forced_name, hf_messages=family.hf_messages, args_key=family.args_key,
                             call_suffix=family.call_suffix)
    if mode == "auto":
        return for_auto_tools(tools, family.name, family.args_key, tokenizer.get_added_vocab())
    return None


def for_auto_tools(tools: list[dict] | None, family_name: str, args_key: str,
                   added_vocab: dict[str, int]) -> Constraint | None:
    """tool_choice "auto" (or omitted) with at least one `strict: true` tool: free text, or tool
    calls in the family's native format (chat_families.FAMILIES), where once a call has started its
    name is one of the tools and its arguments are JSON valid under the tool's `parameters` (closed,
    as for a forced call) for a strict tool, and any JSON object for the others. So a strict tool's
    call always parses and validates, and a model that answers in text is not constrained. None when
    no tool is strict: nothing is constrained then, as on OpenAI.

    `added_vocab` (tokenizer.get_added_vocab()) says which markers are single added tokens, as Qwen's
    <tool_call> and Mistral's [TOOL_CALLS] are: llguidance never lets text match an added token, so
    such a marker is offered both as the token (`<[id]>`, what a trained model writes) and as text.
    The free text is shaped so that the family's parser never reads a call out of it: Llama 3 and
    Mistral calls are the whole turn, so text may not start the way a call does."""
    if not any((t.get("function") or {}).get("strict") is True for t in tools or []):
        return None
    calls = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") or {}
        name = fn.get("name")
        if not isinstance(name, str):
            continue
        schema = {"type": "object"}  # a non-strict tool: any arguments object, so its call still parses
        if fn.get("strict") is True:
            param = f"tools[{i}].function.parameters"
            schema = fn.get("parameters") or NO_ARGS_SCHEMA
            if not isinstance(schema, dict):
                raise InvalidRequestError(f"{param} must be a JSON schema object", param=param)
            schema = _closed(schema)
            _json_grammar(schema, param, f"Invalid schema for function '{name}'")
        head = "{" + f'"name": {json.dumps(name, ensure_ascii=False)}, "{args_key}": '
        calls.append(f'{_lark_str(head)} %json{json.dumps(_styled(schema), ensure_ascii=False)}')  # "}" by family
    if not calls:
        return None
    rules = _AUTO_FORMATS.get(family_name, _AUTO_FORMATS["chatml"])

    def marker(text: str) -> str:
        return f"{_lark_str(text)} | <[{added_vocab[text]}]>" if text in added_vocab else _lark_str(text)

    lark = rules.format(open=marker("<tool_call>"), close=marker("</tool_call>"), tool_calls=marker("[TOOL_CALLS]"))
    lark += "call: " + "\n    | ".join(calls) + "\n"
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise InvalidRequestError(f"Invalid tool schema: {error}", param="tools")
    return Constraint(grammar, {"grammar": lark}, "tools")


# The free-text-or-calls grammar of each family (for_auto_tools fills in the markers and `call`: one
# {"name", args_key} object up to its closing brace). ChatML / Hermes: any text, then <tool_call> blocks,
# one call each, one per line; the lazy `head` ends the text at the first "<tool_call>" written as text,
# after which only the call may follow. Mistral: [TOOL_CALLS] and a list of calls is the whole turn
# (decoding drops the marker token, so text before it would hide the call from the parser); a call may
# end with the 9-character "id" Mistral's template writes; text may not start with "[" nor spell the
# marker. Llama 3: one call object is the whole turn; text may not start with "{".
_AUTO_FORMATS = {
    "chatml": """start: TEXT | first ("\\n" opener body)*
first: head body | TEXT opener body
head[lazy]: TEXT "<tool_call>"
opener: {open}
body: "\\n" call "}}\\n" closer
closer: {close}
TEXT: /(?s:.*)/
""",
    "mistral": """start: TEXT | marker "[" mcall (", " mcall)* "]"
mcall: call ", \\"id\\": " CALL_ID "}}" | call "}}"
CALL_ID: /"[a-zA-Z0-9]{{9}}"/
marker: {tool_calls}
TEXT: /[ \\t\\r\\n]*([^\\[ \\t\\r\\n](?s:.*))?/ & ~/(?s:.*)\\[TOOL_CALLS\\](?s:.*)/
""",
    "llama3": """start: TEXT | call "}}"
TEXT: /[ \\t\\r\\n]*([^{{ \\t\\r\\n](?s:.*))?/
""",
}
_AUTO_FORMATS["hermes"] = _AUTO_FORMATS["chatml"]


def check_tools(tools: list[dict] | None, tool_choice: Any = None) -> None:
    """400 (naming tools[i].function.parameters) for a tool schema a grammar would enforce and
    llguidance cannot compile: a `strict: true` tool's, and every candidate of a forced call
    (tool_choice "required" or a named function). A forced call without tools, or naming a function
    that is not in tools, is a 400 naming tool_choice (here too, so a stream gets it as a 400)."""
    forced = tool_choice == "required"
    named = ((tool_choice.get("function") or {}).get("name") if isinstance(tool_choice, dict) else None)
    names = [(t.get("function") or {}).get("name") for t in tools or []]
    if forced and not names:
        raise InvalidRequestError("tool_choice 'required' needs tools", param="tool_choice")
    if isinstance(tool_choice, dict) and named not in names:
        raise InvalidRequestError(f"tool_choice names function {named!r}, which is not in tools", param="tool_choice")
    for i, tool in enumerate(tools or []):
        fn = tool.get("function") or {}
        schema = fn.get("parameters")
        if schema is None or not (fn.get("strict") is True or forced or (named and fn.get("name") == named)):
            continue
        param = f"tools[{i}].function.parameters"
        if not isinstance(schema, dict):
            raise InvalidRequestError(f"{param} must be a JSON schema object", param=param)
        _json_grammar(_closed(schema), param, f"Invalid schema for function '{fn.get('name')}'")


def _closed(node: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties and
    leaves additionalProperties unsaid (OpenAI's strict mode requires it to be false). A forced call
    then carries only the function's declared arguments; with extra keys allowed a weak model can
    add invented keys until its budget ends, and the call never parses."""
    if isinstance(node, list):
        return [_closed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: (_closed(v) if k in _SUBSCHEMA_KEYS else v) for k, v in node.items()}
    for key in ("properties", "$defs", "definitions", "patternProperties"):
        if isinstance(out.get(key), dict):
            out[key] = {k: _closed(v) for k, v in out[key].items()}
    if isinstance(out.get("properties"), dict) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


_SUBSCHEMA_KEYS = ("items", "prefixItems", "anyOf", "oneOf", "allOf", "not", "additionalProperties")


def _styled(schema: dict) -> dict:
    return {**schema, "x-guidance": {**JSON_STYLE, **(schema.get("x-guidance") or {})}}


def _json_grammar(schema: dict, param: str, what: str = "Invalid JSON schema") -> str:
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_STYLE)
    except (ValueError, TypeError) as e:
        raise InvalidRequestError(f"{what}: {e}", param=param) from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise InvalidRequestError(f"{what}: {error}", param=param)
    return grammar


def _lark_str(text: str) -> str:
    """A Lark string literal (llguidance reads JSON-style escapes)."""
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------- decoding (per row, transformers)

_TOKENIZERS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_TOKENIZERS_LOCK = threading.Lock()


def ll_tokenizer(tokenizer, eos_ids: list[int], n_vocab: int):
    """llguidance's view of a Hugging Face tokenizer (built once per tokenizer, ~0.5 s: cached)."""
    key = (tuple(eos_ids), n_vocab)
    with _TOKENIZERS_LOCK:
        per = _TOKENIZERS.setdefault(tokenizer, {})
        if key not in per:
            # What llguidance.hf.from_tokenizer does, minus its `transformers.PreTrainedTokenizerFast`
            # lookup: transformers' lazy top-level __getattr__ is not thread-safe (see modelmill.ml).
            backend = copy.copy(tokenizer.backend_tokenizer)
            backend.no_padding()
            backend.no_truncation()
            per[key] = llguidance.LLTokenizer(backend.to_str(), n_vocab=max(n_vocab, len(tokenizer)),
                                              eos_token=list(eos_ids) or tokenizer.eos_token_id)
        return per[key]


_EXECUTOR: list = []


def _executor():
    """llguidance's thread pool for batched mask computation (one per process, made on first use)."""
    with _TOKENIZERS_LOCK:
        if not _EXECUTOR:
            _EXECUTOR.append(llguidance.LLExecutor())
        return _EXECUTOR[0]


class RowConstraints(LogitsProcessor):
    """Per-row grammar masks inside one batched generate(): `rows[r]` is row r's Constraint or None.

    generate() calls this once per step with every row's tokens so far: each constrained row first
    feeds its matcher the token chosen at the previous step, then gets its logits masked to what
    the grammar allows next (only EOS once the grammar is complete). A row that generate() has
    finished (it is fed padding) or whose matcher failed is left unmasked: its tokens are dropped.
    """

    def __init__(self, rows: list[Constraint | None], tokenizer, tok_lock, eos_ids: list[int]):
        self.rows, self.tokenizer, self.tok_lock, self.eos_ids = rows, tokenizer, tok_lock, eos_ids
        self.matchers: dict[int, Any] = {}
        self.started = False

    def _start(self, n_vocab: int) -> None:
        """Matchers for the constrained rows, once the logits' width (the model's vocabulary) is known."""
        with self.tok_lock:
            llt = ll_tokenizer(self.tokenizer, self.eos_ids, n_vocab)
        made: dict[int, Any] = {}  # one grammar per request: its other rows copy the first matcher
        for r, c in enumerate(self.rows):
            if c is not None:
                first = made.get(id(c))
                self.matchers[r] = first.deep_copy() if first is not None else llguidance.LLMatcher(llt, c.grammar)
                made.setdefault(id(c), self.matchers[r])
        self.bitmask = torch.zeros((len(self.rows), (llt.vocab_size + 31) // 32), dtype=torch.int32)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if not self.started:
            self._start(scores.shape[-1])
        last = input_ids[:, -1].tolist() if self.started else None
        self.started = True
        pending = []  # (matcher, row) of the rows to mask this step
        for r, m in self.matchers.items():
            if last is not None and not m.is_stopped():
                m.consume_token(last[r])  # a token outside the grammar puts m in its error state
            if not m.is_error():  # a complete (stopped) grammar's mask is EOS only
                pending.append((m, r))
        if len(pending) == 1:
            row = self.bitmask[pending[0][1]]
            pending[0][0].unsafe_compute_mask_ptr(row.data_ptr(), row.numel() * row.element_size())
        elif pending:  # several rows: llguidance computes their masks on its own threads, in parallel
            _executor().unsafe_compute_mask_ptr(pending, self.bitmask.data_ptr(),
                                                self.bitmask.shape[1] * self.bitmask.element_size(), len(self.rows))
        active = [r for _, r in pending]
        if not active:
            return scores
        # One bool per token from the 32-bit words (numpy's unpackbits: llguidance's own torch helper
        # uses torch.compile, which needs a C++ toolchain at run time on CPU, and costs seconds to import).
        words = self.bitmask.numpy()[active]
        allowed = torch.from_numpy(np.unpackbits(words.view(np.uint8), axis=1, bitorder="little").astype(bool))
        vocab = scores.shape[-1]
        if allowed.shape[1] < vocab:
            allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]))
        allowed = allowed[:, :vocab].to(scores.device)
        for i, r in enumerate(active):
            if allowed[i].any():  # never leave a row with no token at all (NaN when sampling)
                scores[r].masked_fill_(~allowed[i], float("-inf"))
        return scores
