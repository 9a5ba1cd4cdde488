"""`input_image` content parts of Responses API input messages (docs/vision.md, docs/responses.md).

A user message's `{"type": "input_image", "image_url": <data: or allowed http(s) URL>, "detail"?}`
becomes a chat `image_url` part (chat completions' own image path: ml/vision.py loads it, the model's
processor makes its tokens at its detail), kept in its place among the text parts. The stored input
item echoes it as OpenAI's InputImageContent. Whether the model reads images is known only once it is
resolved: check() refuses images for a text-only model, and bad images, with a 400 naming
`input[i].content[j]` (or its `.image_url` / `.detail`).
"""

from __future__ import annotations

from collections.abc import Callable

from modelmill import errors
from modelmill.settings import Settings

IMAGE_KEYS = {"type", "image_url", "file_id", "detail", "prompt_cache_breakpoint"}
# OpenAI's ImageDetail -> the detail ModelMill's image processing honours (ml/vision.detail_kwargs):
# "original" (full resolution) is the most a processor gives here, which is "high".
DETAILS = {"auto": "auto", "low": "low", "high": "high", "original": "high"}


def _bad(message: str, param: str, code: str = "invalid_value") -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, param=param, code=code)


def has_images(content) -> bool:
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "input_image" for p in content)


def user_content(content: list, param: str, part_text: Callable[[dict, str], str]) -> tuple[list[dict], list[dict]]:
    """(the stored item's content parts, the chat message's content parts) of a user message holding
    images, parts in order; part_text(part, where) reads a text part (requests.py's checks)."""
    stored, chat = [], []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if isinstance(part, dict) and part.get("type") == "input_image":
            stored_part, chat_part = _image(part, where)
            stored.append(stored_part)
            chat.append(chat_part)
        else:
            text = part_text(part, where)
            stored.append({"type": "input_text", "text": text})
            chat.append({"type": "text", "text": text})
    return stored, chat


def _image(part: dict, where: str) -> tuple[dict, dict]:
    errors.reject_unknown_fields(part, IMAGE_KEYS, where)
    if part.get("file_id") is not None:
        raise _bad(f"{where}.file_id: images by file id are not supported; send image_url (a base64 data: URL or "
                   "an allowed http(s) URL)", f"{where}.file_id", "unsupported_parameter")
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise _bad(f"{where}.image_url must be a URL string (a base64 data: URL or an allowed http(s) URL)",
                   f"{where}.image_url", "missing_required_parameter" if url is None else "invalid_value")
    detail = "auto" if part.get("detail") is None else part["detail"]
    if detail not in DETAILS:
        raise _bad(f"{where}.detail must be one of {', '.join(DETAILS)}", f"{where}.detail")
    return ({"type": "input_image", "image_url": url, "file_id": None, "detail": detail},
            {"type": "image_url", "image_url": {"url": url, "detail": DETAILS[detail]}})


def check(settings: Settings, served, items: list[dict]) -> None:
    """A 400 naming the part for images sent to a text-only model, too many images, or an image that
    cannot be used (blocking: may fetch an allow-listed URL). items: this request's stored input items,
    items[i] being input[i]."""
    from modelmill.ml import vision

    found = [(f"input[{i}].content[{j}]", p) for i, item in enumerate(items) if item.get("type") == "message"
             for j, p in enumerate(item.get("content") or []) if p.get("type") == "input_image"]
    if not found:
        return
    if not vision.is_vision_base(settings.home, served.base_model):
        raise _bad(f"{found[0][0]} is an input_image part, but this model is text-only: it cannot read image input. "
                   "Send text parts only, or use a vision-language model", found[0][0], "unsupported_content")
    if len(found) > vision.MAX_IMAGES_PER_EXAMPLE:
        raise _bad(f"{len(found)} images in one request; at most {vision.MAX_IMAGES_PER_EXAMPLE} are allowed", "input",
                   "too_many_images")
    policy = vision.ImagePolicy(hosts=settings.image_hosts)
    for where, part in found:
        try:
            vision.load_image(part["image_url"], policy)
        except vision.ImageError as e:
            raise _bad(f"{where}.image_url: {e.message}", f"{where}.image_url", e.code) from None
