"""`modelmill data from-stored`: chat completions stored with `store: true` -> SFT lines.

OpenAI's "distil from stored completions" flow: list the completions (filtered by metadata and
model) with the SDK's `client.chat.completions.list`, read each one's input messages with
`client.chat.completions.messages.list`, and append the completion's first choice as the
assistant turn. Works against OpenAI or a ModelMill server alike.
"""

from __future__ import annotations

from tqdm import tqdm

from modelmill.errors import InvalidRequestError
from modelmill.ml.data.messages import MESSAGE_KEYS

from .output import check_sft_line
from .teacher import assistant_message


def stored_lines(client, *, metadata: dict | None = None, model: str | None = None,
                 progress: bool = False) -> tuple[list[dict], list[str]]:
    """(lines, skipped): one SFT line per stored completion; `skipped` says which were not used and why."""
    params = {k: v for k, v in (("metadata", metadata or None), ("model", model)) if v}
    lines, skipped = [], []
    bar = tqdm(desc="from-stored", unit="completion", disable=not progress)
    for completion in client.chat.completions.list(limit=100, **params):
        bar.update(1)
        if not completion.choices:
            skipped.append(f"{completion.id}: no choices")
            continue
        messages = [_clean(m.to_dict()) for m in client.chat.completions.messages.list(completion.id, limit=100)]
        answer = assistant_message(completion.choices[0].to_dict())
        extra = completion.to_dict()
        line = {"messages": [*messages, answer], **({"tools": extra["tools"]} if extra.get("tools") else {})}
        try:
            check_sft_line(line, f"stored completion {completion.id}")
        except InvalidRequestError as e:
            skipped.append(f"{completion.id}: {e.message}")
            continue
        lines.append(line)
    bar.close()
    return lines, skipped


def _clean(message: dict) -> dict:
    """A stored message (with its id, content_parts...) -> the keys a training line allows."""
    role = message.get("role")
    allowed = MESSAGE_KEYS.get(role, {"role", "content"}) - {"weight"}
    out = {k: v for k, v in message.items() if k in allowed and v is not None}
    if role == "assistant" and not out.get("content") and out.get("tool_calls"):
        out.pop("content", None)
    return out
