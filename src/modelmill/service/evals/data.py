"""What a run reads: its data-source items, checked against the eval's item schema, and the
prompt each item becomes (input_messages).

A data-source row is (item, sample | None). Inline content is OpenAI's
`[{"item": {...}, "sample"?: {...}}]`. A JSONL file holds one such object per line; a line
that is not of that shape (keys other than item / sample) is taken as the item itself, which
is how many eval files in the wild are written.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelmill import errors
from modelmill.service.store import Store

Row = tuple[dict, "dict | None"]  # (item, sample)
ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text", "text")
# Problems quoted in one error message about a data source.
MAX_PROBLEMS = 3


class DataSourceError(errors.InvalidRequestError):
    """A data source that cannot be used; `param` is the request field it came from."""

    code = "invalid_data_source"


def load_rows(store: Store, source: dict, param: str, *, project_id: str | None) -> list[Row]:
    """The rows of a jsonl source ({type: file_content, content} or {type: file_id, id}); a file_id
    must be project_id's file (another project's is "does not exist", as a missing one)."""
    kind = source.get("type")
    if kind in ("stored_completions", "responses"):  # the project's stored objects (evals/stored_sources.py)
        from modelmill.service.evals import stored_sources

        return stored_sources.load(store, source, param, project_id=project_id)
    if kind == "file_content":
        content = source.get("content")
        if not isinstance(content, list):
            raise DataSourceError(f"{param}.content must be a list of {{item, sample?}} objects",
                                  param=f"{param}.content")
        return [_row(entry, f"{param}.content[{i}]", wrapped_only=True) for i, entry in enumerate(content)]
    if kind == "file_id":
        file_id = source.get("id")
        if not isinstance(file_id, str) or not file_id:
            raise DataSourceError(f"{param}.id must be a file id", param=f"{param}.id")
        try:
            store.files.get(file_id, project_id=project_id)
        except errors.NotFoundError:
            raise DataSourceError(f"{param}.id: file {file_id} does not exist", param=f"{param}.id",
                                  code="file_not_found") from None
        return read_jsonl(store.files.blob_path(file_id), f"{param}.id", file_id)
    raise DataSourceError(f"{param}.type must be 'file_content' or 'file_id'; got {kind!r}", param=f"{param}.type",
                          code="unsupported_value")


def read_jsonl(path: Path, param: str, name: str) -> list[Row]:
    rows, problems = [], []
    try:
        with open(path, "rb") as f:
            for n, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    rows.append(_row(json.loads(raw), f"line {n}", wrapped_only=False))
                except (ValueError, UnicodeDecodeError) as e:
                    message = e.message if isinstance(e, DataSourceError) else f"line {n}: not valid JSON"
                    problems.append(message)
                    if len(problems) >= MAX_PROBLEMS:
                        break
    except FileNotFoundError:
        raise DataSourceError(f"{param}: file {name} no longer exists", param=param, code="file_not_found") from None
    if problems:
        raise DataSourceError(f"{param}: file {name} is invalid: " + "; ".join(problems), param=param)
    return rows


def _row(entry, where: str, *, wrapped_only: bool) -> Row:
    if not isinstance(entry, dict):
        raise DataSourceError(f"{where} must be a JSON object", param=where)
    wrapped = "item" in entry and set(entry) <= {"item", "sample"}
    if not wrapped:
        if wrapped_only:
            raise DataSourceError(f"{where} must be an object with 'item' (and optionally 'sample')",
                                  param=f"{where}.item")
        return entry, None
    if not isinstance(entry["item"], dict):
        raise DataSourceError(f"{where}.item must be an object", param=f"{where}.item")
    sample = entry.get("sample")
    if sample is not None and not isinstance(sample, dict):
        raise DataSourceError(f"{where}.sample must be an object", param=f"{where}.sample")
    return entry["item"], sample


def check_items(rows: list[Row], item_schema: dict, where) -> None:
    """Every item must match the eval's item_schema. `where(i)` names row i for the message and
    param (e.g. "data_source.source.content[3].item" or "line 4")."""
    import jsonschema

    validator = jsonschema.validators.validator_for(item_schema)(item_schema)
    for i, (item, _) in enumerate(rows):
        err = jsonschema.exceptions.best_match(validator.iter_errors(item))
        if err is not None:
            at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
            param, label = where(i)
            raise DataSourceError(f"{label}{at} does not match the eval's item_schema: {err.message}", param=param,
                                  code="invalid_item")


# -- input_messages -------------------------------------------------------------------------------

def check_input_messages(spec, param: str) -> None:
    """The shape of a completions data source's input_messages (no data needed)."""
    from modelmill.ml.graders import templating

    if not isinstance(spec, dict):
        raise DataSourceError(f"{param} is required: a template or an item_reference", param=param)
    kind = spec.get("type")
    if kind == "item_reference":
        ref = spec.get("item_reference")
        try:
            if not isinstance(ref, str) or templating.parse_path(ref.strip("{} "))[0] != "item":
                raise templating.InvalidVariable(str(ref), "must name a variable in the item namespace")
        except templating.InvalidVariable as e:
            raise DataSourceError(f"{param}.item_reference: {e}; e.g. 'item.messages'",
                                  param=f"{param}.item_reference") from None
    elif kind == "template":
        template = spec.get("template")
        if not isinstance(template, list) or not template:
            raise DataSourceError(f"{param}.template must be a non-empty list of messages", param=f"{param}.template")
        for j, message in enumerate(template):
            _check_message(message, f"{param}.template[{j}]")
    else:
        raise DataSourceError(f"{param}.type must be 'template' or 'item_reference'; got {kind!r}",
                              param=f"{param}.type")


def _check_message(message, param: str) -> None:
    from modelmill.ml.graders import templating

    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise DataSourceError(f"{param}.role must be one of {', '.join(ROLES)}", param=f"{param}.role")
    for k, text in _texts(message.get("content"), f"{param}.content"):
        try:
            templating.check_template(text)
            if any(templating.parse_path(v)[0] != "item" for v in templating.variables(text)):
                raise templating.InvalidVariable(text, "input messages can only use the item namespace")
        except templating.InvalidVariable as e:
            raise DataSourceError(f"{k}: {e}", param=k) from None


def _texts(content, param: str) -> list[tuple[str, str]]:
    """(param, text) for each text in a message content (a string, a part or a list of parts)."""
    if isinstance(content, str):
        return [(param, content)]
    parts = [content] if isinstance(content, dict) else content
    if not isinstance(parts, list):
        raise DataSourceError(f"{param} must be a string or a list of content parts", param=param)
    out = []
    for i, part in enumerate(parts):
        where = f"{param}[{i}]" if isinstance(content, list) else param
        if isinstance(part, str):
            out.append((where, part))
        elif isinstance(part, dict) and part.get("type") in TEXT_PARTS and isinstance(part.get("text"), str):
            out.append((f"{where}.text", part["text"]))
        elif not (isinstance(part, dict) and part.get("type") in ("input_image", "input_audio")):
            raise DataSourceError(f"{where} must be a text part (input_text)", param=where)
    return out


def normalize_input_messages(spec: dict) -> dict:
    """A template's messages in the EvalItem form OpenAI echoes back: {"type": "message", "role",
    "content": {"type": "input_text" | "output_text", "text"}} for a string content (a bare string
    fits both of the spec's message shapes, so an echoed run would match neither exactly)."""
    if spec.get("type") != "template":
        return spec
    out = []
    for m in spec["template"]:
        content = m.get("content")
        if isinstance(content, str):
            part = "output_text" if m.get("role") == "assistant" else "input_text"
            content = {"type": part, "text": content}
        out.append({**m, "type": "message", "content": content})
    return {**spec, "template": out}


def render_input(spec: dict, item: dict) -> list[dict]:
    """The chat messages sent to the model for `item`: the template rendered with {{item.*}}
    (text parts joined into one text; input_image parts kept as image_url parts), or the referenced item field
    (a list of messages, or a string taken as one user message). Raises InvalidVariable or
    DataSourceError when this item does not fit."""
    from modelmill.ml.graders import templating

    if spec["type"] == "item_reference":
        value = templating.lookup(spec["item_reference"].strip("{} "), {}, item)
        if isinstance(value, str):
            return [{"role": "user", "content": value}]
        if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
            raise DataSourceError(f"{spec['item_reference']} must be a list of messages with role and content")
        return [_plain(m) for m in value]
    return [_render_message(m, item) for m in spec["template"]]


def _render_message(m: dict, item: dict) -> dict:
    """One template message: its text parts rendered and joined; its input_image parts (image_url
    templated too) kept after the text as chat image_url parts, which a vision-language model reads and
    sampling refuses for a text-only one (an item error, never a silent drop; docs/vision.md)."""
    from modelmill.ml.graders import templating

    content = m.get("content")
    text = "".join(templating.render(t, {}, item) for _, t in _texts(content, "content"))
    parts = content if isinstance(content, list) else [content]
    images = [p for p in parts if isinstance(p, dict) and p.get("type") == "input_image"]
    if any(not isinstance(p.get("image_url"), str) for p in images):
        raise DataSourceError("an input_image part needs image_url: a URL string (a data: URL or an allowed "
                              "http(s) URL; it may use {{item.*}})", param="content")
    if not images:
        return {"role": m["role"], "content": text}
    rendered = [{"type": "image_url", "image_url": {"url": templating.render(p["image_url"], {}, item),
                                                    **({"detail": p["detail"]} if p.get("detail") else {})}}
                for p in images]
    return {"role": m["role"], "content": ([{"type": "text", "text": text}] if text else []) + rendered}


def _plain(message: dict) -> dict:
    """A message for ml.sampling: text content, or, when it carries images (OpenAI's input_image parts or
    chat image_url parts), chat parts in their order, each image an image_url part with its detail (a
    vision-language model reads it; sampling refuses it for a text-only one, docs/vision.md). Tool calls
    and tool results are kept as they are."""
    out = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls", "tool_call_id", "name")}
    content = message.get("content")
    parts = content if isinstance(content, list) else [content]
    if any(isinstance(p, dict) and p.get("type") in ("input_image", "image_url") for p in parts):
        out["content"] = [_chat_part(p, f"content[{i}]") for i, p in enumerate(parts)
                          if not (isinstance(p, dict) and p.get("type") == "input_audio")]
    elif content is not None and not isinstance(content, str):
        out["content"] = "".join(t for _, t in _texts(content, "content"))
    return out


def _chat_part(part, where: str) -> dict:
    """One part of an item_reference message as a chat content part (text or image_url)."""
    if isinstance(part, dict) and part.get("type") == "image_url":
        return part  # already chat's shape; sampling checks the image itself
    if isinstance(part, dict) and part.get("type") == "input_image":
        if not isinstance(part.get("image_url"), str):
            raise DataSourceError(f"{where}: an input_image part needs image_url: a URL string", param=where)
        return {"type": "image_url", "image_url": {"url": part["image_url"],
                                                   **({"detail": part["detail"]} if part.get("detail") else {})}}
    [(_, text)] = _texts(part, where)
    return {"type": "text", "text": text}
