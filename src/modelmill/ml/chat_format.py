"""How chat messages and tools become model text, and how model text becomes tool calls.

Training (sft.py) and generation (sampling.py) both go through here, so a model is
trained on exactly the format it is later prompted with.

SmolLM2's own ChatML template ignores `tools=` and has no `{% generation %}` markers,
so TRL's assistant-only loss cannot use it. We install our own ChatML template
(templates/chatml_tools.jinja, Hermes/Qwen2.5 tool format) on every tokenizer we save.
"""

from __future__ import annotations

import json
import re
import uuid
from importlib import resources

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def chat_template() -> str:
    return resources.files("modelmill.ml").joinpath("templates/chatml_tools.jinja").read_text()


def content_text(content) -> str:
    """OpenAI content is a string, None, or a list of parts; we keep the text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in ("text", None))


def normalize_messages(messages: list[dict]) -> list[dict]:
    """OpenAI messages -> the flat dicts the template expects.

    developer becomes system; content parts become text; tool-call arguments stay
    JSON strings (as OpenAI sends them) but are re-serialised compactly; weight is kept.
    """
    out = []
    for m in messages:
        role = "system" if m.get("role") == "developer" else m.get("role")
        msg = {"role": role, "content": content_text(m.get("content")), "weight": m.get("weight")}
        if m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                if not isinstance(tc, dict):
                    continue
                fn = tc.get("function") or {}
                args = fn.get("arguments", "{}")
                try:
                    args = json.dumps(json.loads(args) if isinstance(args, str) else args, ensure_ascii=False)
                except (TypeError, ValueError):
                    args = json.dumps(args) if not isinstance(args, str) else args
                calls.append({"id": tc.get("id"), "type": "function",
                              "function": {"name": fn.get("name", ""), "arguments": args}})
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def normalize_tools(tools: list[dict] | None) -> list[dict] | None:
    """Keep the function definitions only (what the template lists inside <tools>)."""
    if not tools:
        return None
    return [t.get("function", t) for t in tools if isinstance(t, dict)]


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """Split generated text into (content, tool_calls in OpenAI's shape).

    Each <tool_call>{"name", "arguments"}</tool_call> block becomes a call; a block whose
    JSON does not parse is left in the content, so nothing the model said is lost.
    """
    calls, kept = [], text
    for m in TOOL_CALL_RE.finditer(text):
        try:
            obj = json.loads(m.group(1))
            name = obj["name"]
            args = obj.get("arguments")
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if not isinstance(name, str) or not name:
            continue  # not a call we could dispatch: keep the text
        if args is None:
            args = {}
        calls.append({
            "id": "call_" + uuid.uuid4().hex[:24],
            "type": "function",
            "function": {"name": str(name),
                         "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)},
        })
        kept = kept.replace(m.group(0), "")
    content = kept.strip() if calls else text
    return (content or None) if calls else content, calls
