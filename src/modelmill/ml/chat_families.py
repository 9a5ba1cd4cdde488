"""Chat families: which chat template a model renders with, how its tool calls are written and parsed.

A model keeps its own chat template when that template renders tools and writes tool calls in a
format registered here; otherwise (no template, a template that ignores `tools=` as SmolLM2's and
Gemma 2's do, or an unknown tool-call format) it gets ModelMill's ChatML template
(templates/chatml_tools.jinja). The choice is made once, when a model is added (`choose_template`),
and recorded next to its weights in CHOICE_FILE, so training and serving load the same template.

The family is then read off the template a tokenizer carries (`family_of`), by rendering a probe
tool call with it, so every caller that holds a tokenizer (SFT, DPO, RFT, sampling) agrees without
being told. One registry, FAMILIES, keyed by family name, holds each format's conventions:

| family  | tool calls as the model writes them                                     |
| chatml  | ModelMill's fallback: <tool_call>{"name", "arguments"}</tool_call>      |
| hermes  | Qwen2/2.5, Hermes: the same <tool_call> blocks, in the model's template  |
| llama3  | Llama 3.x: the whole turn is {"name": ..., "parameters": {...}}         |
| mistral | Mistral: [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]            |

Parsers are pure functions text -> (content, tool_calls in OpenAI's shape). A block that does
not parse stays in the content, so nothing the model said is lost.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CHOICE_FILE = "modelmill_chat.json"  # {"family", "template": "native" | "chatml", "reason", "model_type"}
PROBE_TOOL = "mm_probe_lookup"  # a function name no real template or conversation uses
_DECODER = json.JSONDecoder()

Parsed = tuple[str | None, list[dict]]


@dataclass(frozen=True)
class Family:
    """How one family renders and parses tool calls."""

    name: str  # registry key, recorded in CHOICE_FILE
    tool_format: str  # one line for docs and messages
    parse: Callable[[str], Parsed]  # generated text -> (content or None, OpenAI tool calls)
    markers: tuple[str, ...]  # text that starts a tool call: streaming holds it back, never shows it
    end_tokens: tuple[str, ...]  # tokens that close an assistant turn (added to generation's EOS ids)
    call_prefix: str  # what a forced tool call (tool_choice required / named) starts with
    args_key: str = "arguments"  # the key the model writes arguments under
    hf_messages: bool = True  # transformers' convention: arguments as dicts, tools as {"type", "function"}
    call_id: Callable[[str], str] | None = None  # rewrites tool call ids the template insists on
    call_suffix: str = "}"  # what closes one call after its arguments (constrained tool calls: ml/constraints.py)

    def prefill(self, forced_name: str | None) -> str:
        """The forced start of the assistant turn for tool_choice "required" (no name) or a named function.

        Native families stop before the space that follows '"arguments":': BPE tokenizers glue that
        space to the next token (' {'), so a prompt ending in a bare space would be a token sequence
        the model never saw in training. ModelMill's ChatML keeps its original prefill."""
        if forced_name:
            head = self.call_prefix + '{"name": ' + json.dumps(forced_name, ensure_ascii=False) + \
                f', "{self.args_key}":'
            return head if self.hf_messages else head + " "
        return self.call_prefix + '{"name": "'


# ---------------------------------------------------------------- parsers (pure)


def _call(name, args) -> dict | None:
    """One OpenAI tool call, or None when there is no usable function name."""
    if not isinstance(name, str) or not name:
        return None
    if args is None:
        args = {}
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name,
                         "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}}


_HERMES_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> Parsed:
    """Each <tool_call>{"name", "arguments"}</tool_call> block becomes a call; blocks whose JSON does
    not parse stay in the content."""
    calls, kept = [], text
    for m in _HERMES_RE.finditer(text):
        try:
            obj = json.loads(m.group(1))
            call = _call(obj["name"], obj.get("arguments"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if call is None:
            continue
        calls.append(call)
        kept = kept.replace(m.group(0), "")
    if not calls:
        return text, []
    return kept.strip() or None, calls


def parse_llama3(text: str) -> Parsed:
    """Llama 3.x: the turn starts with one or more JSON objects {"name", "parameters"} (";" or
    whitespace between them; <|python_tag|> is a special token and already gone from decoded text)."""
    rest, calls = text.strip().removeprefix("<|python_tag|>").lstrip(), []
    while rest.startswith("{"):
        try:
            obj, end = _DECODER.raw_decode(rest)
            # a plain JSON answer such as {"name": "Bob"} is content, not a call: it needs its arguments
            has_args = "parameters" in obj or "arguments" in obj
            call = _call(obj.get("name"), obj.get("parameters", obj.get("arguments"))) if has_args else None
        except (ValueError, AttributeError, TypeError):
            break
        if call is None:
            break
        calls.append(call)
        rest = rest[end:].lstrip().lstrip(";").lstrip()
    if not calls:
        return text, []
    return rest or None, calls


def parse_mistral(text: str) -> Parsed:
    """Mistral: [TOOL_CALLS] then a JSON list of {"name", "arguments"}. Decoding with special tokens
    skipped drops the marker itself, so a turn that starts with such a list counts too."""
    at = text.find("[TOOL_CALLS]")
    head, body = (text[:at], text[at + len("[TOOL_CALLS]"):]) if at >= 0 else ("", text)
    body = body.lstrip()
    if at < 0 and (head.strip() or not body.startswith("[{")):
        return text, []
    try:
        items, end = _DECODER.raw_decode(body)
    except ValueError:
        return text, []
    calls = [c for c in (_call(i.get("name"), i.get("arguments")) for i in items
                         if isinstance(i, dict) and "arguments" in i) if c] if isinstance(items, list) else []
    if not calls:
        return text, []
    content = (head.strip() + " " + body[end:].strip()).strip()
    return content or None, calls


def mistral_call_id(call_id: str) -> str:
    """Mistral's template accepts only 9 alphanumeric characters; OpenAI's ids are longer. The same
    id always maps to the same 9 characters, so a tool result still names its call."""
    if isinstance(call_id, str) and len(call_id) == 9 and call_id.isalnum():
        return call_id
    return hashlib.sha256(str(call_id).encode()).hexdigest()[:9]


FAMILIES: dict[str, Family] = {
    "chatml": Family("chatml", "<tool_call>{\"name\", \"arguments\"}</tool_call> (ModelMill's ChatML)",
                     parse_hermes, ("<tool_call>",), ("<|im_end|>",), "<tool_call>\n", hf_messages=False,
                     call_suffix="}\n</tool_call>"),
    "hermes": Family("hermes", "<tool_call>{\"name\", \"arguments\"}</tool_call> (Qwen2.5 / Hermes)",
                     parse_hermes, ("<tool_call>",), ("<|im_end|>", "<|endoftext|>"), "<tool_call>\n",
                     call_suffix="}\n</tool_call>"),
    "llama3": Family("llama3", "{\"name\", \"parameters\"} JSON as the whole turn (Llama 3.x)",
                     parse_llama3, ('{"name"',), ("<|eot_id|>", "<|eom_id|>"), "", args_key="parameters"),
    "mistral": Family("mistral", "[TOOL_CALLS][{\"name\", \"arguments\"}] (Mistral)",
                      parse_mistral, ("[TOOL_CALLS]", '[{"name"'), ("</s>",), "[TOOL_CALLS][",
                      call_id=mistral_call_id, call_suffix="}]"),
}


# ---------------------------------------------------------------- detection and the per-model choice


def _probe_messages(with_call: bool) -> list[dict]:
    msgs = [{"role": "user", "content": "Look up mm."}]
    if with_call:
        msgs.append({"role": "assistant", "content": "", "tool_calls": [{
            "id": "a1b2c3d4e", "type": "function", "function": {"name": PROBE_TOOL, "arguments": {"q": "mm"}}}]})
    return msgs


PROBE_TOOLS = [{"type": "function", "function": {
    "name": PROBE_TOOL, "description": "Look something up.",
    "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]


def detect_native(tokenizer) -> tuple[str | None, str]:
    """(family name or None, why) for the template the tokenizer carries now, used as is."""
    if not getattr(tokenizer, "chat_template", None):
        return None, "the model has no chat template"
    try:
        declared = tokenizer.apply_chat_template(_probe_messages(False), tools=PROBE_TOOLS, tokenize=False,
                                                 add_generation_prompt=True)
        called = tokenizer.apply_chat_template(_probe_messages(True), tools=PROBE_TOOLS, tokenize=False)
    except Exception as e:  # noqa: BLE001 - any failure to render a tool conversation means "cannot render tools"
        return None, f"its chat template cannot render a tool conversation ({type(e).__name__}: {e})"
    if PROBE_TOOL not in declared:
        return None, "its chat template ignores tools"
    tail = called[len(declared):] if called.startswith(declared) else called
    if "<tool_call>" in tail:
        return "hermes", "its chat template writes <tool_call> blocks"
    if "[TOOL_CALLS]" in tail:
        return "mistral", "its chat template writes [TOOL_CALLS]"
    if re.search(r'\{"name": "' + PROBE_TOOL + r'", "parameters": ', tail):
        return "llama3", "its chat template writes Llama 3 JSON calls"
    return None, "its chat template writes tool calls in a format ModelMill cannot parse"


def choose_template(tokenizer, model_type: str | None, fallback_template: str) -> dict:
    """Decide, once per model, which template it trains and serves with; sets tokenizer.chat_template
    and returns the record to save as CHOICE_FILE."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: the tool-use one when there is one
        tokenizer.chat_template = template.get("tool_use") or template.get("default") or next(iter(template.values()))
    family, reason = detect_native(tokenizer)
    if family is None:
        tokenizer.chat_template = fallback_template
        return {"family": "chatml", "template": "chatml", "reason": reason, "model_type": model_type}
    return {"family": family, "template": "native", "reason": reason, "model_type": model_type}


def read_choice(model_dir: Path) -> dict | None:
    path = Path(model_dir) / CHOICE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_choice(model_dir: Path, choice: dict) -> None:
    (Path(model_dir) / CHOICE_FILE).write_text(json.dumps(choice, indent=2, sort_keys=True) + "\n")


_FAMILY_BY_TEMPLATE: dict[str, str] = {}


def family_of(tokenizer) -> Family:
    """The family of the template this tokenizer carries (cached per template text)."""
    from modelmill.ml import chat_format

    template = tokenizer.chat_template
    if not isinstance(template, str) or template == chat_format.chat_template():
        return FAMILIES["chatml"]
    if template not in _FAMILY_BY_TEMPLATE:
        name, _ = detect_native(tokenizer)
        _FAMILY_BY_TEMPLATE[template] = name or "chatml"
    return FAMILIES[_FAMILY_BY_TEMPLATE[template]]
