"""How chat messages and tools become model text, and how model text becomes tool calls.

Training (sft.py, dpo.py, rft/) and generation (sampling/) all render through `render`, so a
model is trained on exactly the format it is later prompted with.

A model renders with its own chat template when it has one that renders tools in a format
chat_families knows (Qwen2.5/Hermes, Llama 3.x, Mistral); otherwise with ModelMill's ChatML
template (templates/chatml_tools.jinja, Hermes/Qwen2.5 tool format), as SmolLM2 and
modelmill-tiny do. chat_families decides and records which (see its docstring).

The assistant-only loss mask does not rely on `{% generation %}` markers, which few templates
have: `tokenize_conversation` finds each assistant turn by rendering prefixes of the conversation
and diffing them (see `assistant_spans`).
"""

from __future__ import annotations

import json
from importlib import resources

from modelmill.ml import chat_families


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
    """Split generated text into (content, tool_calls in OpenAI's shape), in the <tool_call> format of
    ModelMill's ChatML template (chat_families.parse_hermes). For a model's own format use
    `chat_families.family_of(tokenizer).parse`."""
    return chat_families.parse_hermes(text)


# ---------------------------------------------------------------- rendering with the model's template


def template_inputs(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[list[dict], list | None]:
    """OpenAI messages and tools -> what the tokenizer's template expects.

    ModelMill's ChatML template takes tool-call arguments as JSON text and tools as bare function
    definitions; native templates follow transformers' convention (arguments as objects, tools as
    {"type": "function", "function": ...}) and may insist on their own tool call ids (Mistral)."""
    family = chat_families.family_of(tokenizer)
    msgs = normalize_messages(messages)
    if not family.hf_messages:
        return msgs, normalize_tools(tools)
    fix_id = family.call_id or (lambda i: i)
    for src, msg in zip(messages, msgs, strict=True):
        for tc in msg.get("tool_calls") or []:
            tc["id"] = fix_id(tc["id"] or "")
            try:
                args = json.loads(tc["function"]["arguments"])
            except (TypeError, ValueError):
                continue  # not JSON: the template gets the text as written
            tc["function"]["arguments"] = args
        if msg["role"] == "tool":
            msg["tool_call_id"] = fix_id(str(src.get("tool_call_id") or ""))
    defs = normalize_tools(tools)
    return msgs, ([{"type": "function", "function": d} for d in defs] if defs else None)


def render(tokenizer, messages: list[dict], tools: list[dict] | None = None, *,
           add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it: the tokenizer's chat template over OpenAI messages."""
    msgs, defs = template_inputs(tokenizer, messages, tools)
    return tokenizer.apply_chat_template(msgs, tools=defs, add_generation_prompt=add_generation_prompt,
                                         tokenize=False)


def assistant_turn(tokenizer, before: list[dict], message: dict, tools: list[dict] | None) -> tuple[str, str, bool]:
    """(prompt, turn, in_place) for assistant `message` answering `before`.

    prompt is `before` rendered with the generation prompt, turn is the text the template adds for
    the message after it (its content or tool calls and its end-of-turn token, without the
    whitespace that separates turns). in_place is True when prompt + turn is how the turn starts in
    render(before + [message]); some templates move text between turns (Mistral puts the system
    message and the tools in the last user turn), and then the turn is rendered after a one-line
    stand-in conversation instead, and in_place is False."""
    from jinja2 import TemplateError

    stand_in = [{"role": "user", "content": "x"}]
    for ctx, defs in ((before, tools), (stand_in, None)):
        try:
            prompt = render(tokenizer, ctx, defs, add_generation_prompt=True)
            whole = render(tokenizer, [*ctx, message], defs)
        except TemplateError:
            if ctx is stand_in:
                raise
            continue  # e.g. a template that cannot render `before` alone (no user turn yet)
        if whole.startswith(prompt):
            return prompt, whole[len(prompt):].rstrip(), ctx is before
    raise ValueError("the chat template renders an assistant turn differently from its own prompt")


def assistant_spans(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[str, list[tuple[int, int, bool]]]:
    """(rendered conversation, [(start, end, trained) character span of every assistant turn]).

    Why not {% generation %} markers: few templates have them. Each assistant turn is found by
    rendering the conversation up to it twice (with the generation prompt, then with the turn) and
    taking the difference. Where that prefix is not where the turn sits in the full rendering
    (templates that move text between turns), the turn's text is searched for after the content of
    the messages before it. Turns with weight 0 are context: trained is False."""
    full = render(tokenizer, messages, tools)
    spans, cursor = [], 0
    for i, msg in enumerate(messages):
        if msg.get("role") != "assistant":
            text = content_text(msg.get("content")).strip()  # templates may trim it
            if text and msg.get("role") not in ("system", "developer"):  # system text may move (Mistral)
                found = full.find(text, cursor)
                cursor = found + len(text) if found >= 0 else cursor
            continue
        prompt, turn, in_place = assistant_turn(tokenizer, messages[:i], msg, tools)
        start = len(prompt) if in_place and full.startswith(prompt + turn) and len(prompt) >= cursor \
            else full.find(turn, cursor)
        if start < 0:
            raise ValueError(f"message {i}: cannot find the assistant turn in the rendered conversation")
        cursor = start + len(turn)
        spans.append((start, cursor, msg.get("weight") != 0))
    return full, spans


def tokenize_conversation(tokenizer, messages: list[dict], tools: list[dict] | None) -> tuple[list[int], list[bool]]:
    """(token ids of the rendered conversation, per token: is it part of an assistant turn to train on).

    The text is tokenized piece by piece, cut where each assistant turn starts and ends (no special
    tokens added), so the tokens before a turn are exactly the tokens of the prompt sampling sends
    (a tokenizer may merge a prompt's trailing "\n\n" differently when text follows it)."""
    full, spans = assistant_spans(tokenizer, messages, tools)
    cuts = sorted({0, len(full), *(i for start, end, _ in spans for i in (start, end))})
    trained = {(start, end) for start, end, keep in spans if keep}
    ids: list[int] = []
    mask: list[bool] = []
    for a, b in zip(cuts, cuts[1:]):
        piece = tokenizer(full[a:b], add_special_tokens=False)["input_ids"]
        ids += piece
        mask += [(a, b) in trained] * len(piece)
    return ids, mask
