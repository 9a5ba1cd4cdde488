"""Text the service cannot store or encode, refused once at the edge (api/edge.py) with a 400
naming the field, instead of a 500 wherever it would later break:

- a NUL character: SQLite's JSON functions and Postgres TEXT reject it, C libraries cut at it;
- an unpaired UTF-16 surrogate ("\\ud800" in JSON): Python's json accepts it into a str that then
  cannot be encoded as UTF-8 (the store, logs, the tokenizer, the worker's error events all fail).

JSON bodies are checked with a byte scan first (C speed): only a body containing an escaped NUL or
surrogate ("\\u0000", "\\ud83d"...) is parsed and walked to find the field, since a raw NUL or a raw
surrogate cannot occur in valid UTF-8 JSON (the body's own parser refuses those with a 400).
Paired surrogates (escaped emoji) pass the walk: json.loads joins them into one character.

The same walk bounds nesting (MAX_JSON_DEPTH): it runs only on a body with more brackets than that.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse

# An escaped NUL or surrogate in raw JSON; may match inside an escaped backslash ("\\\\u0000"), the
# walk then finds nothing and the body passes.
_SUSPECT_JSON = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
# Deepest nesting of objects and arrays a JSON body may have. Deeper input overflows Python's
# recursion in template rendering, pydantic and json.dumps (a 500); OpenAI's own structured-output
# schemas allow 10 levels, so 100 leaves tool and grader schemas ample room.
MAX_JSON_DEPTH = 100
TOO_DEEP = "nesting too deep"


def bad_text(value: str) -> str | None:
    """Why `value` can't be accepted, or None."""
    m = _BAD_TEXT.search(value)
    if m is None:
        return None
    return "a NUL character" if m.group() == "\x00" else f"an unpaired surrogate (U+{ord(m.group()):04X})"


def refusal(param: str | None, why: str) -> JSONResponse:
    where = f"'{param}'" if param else "The request"
    return JSONResponse(status_code=400, content={"error": {
        "message": f"Invalid value for {where}: text must be valid Unicode without NUL characters; it contains {why}.",
        "type": "invalid_request_error", "param": param, "code": "invalid_text"}})


def check_path_and_query(path: str, query_string: bytes) -> JSONResponse | None:
    if "\x00" in path:
        return refusal(None, "a NUL character in the URL path")
    if b"%00" not in query_string.lower() and b"\x00" not in query_string:
        return None  # percent-decoding can't make a surrogate: invalid UTF-8 decodes to U+FFFD
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):  # as Starlette does
        for text in (name, value):
            why = bad_text(text)
            if why is not None:
                return refusal(name.replace("\x00", "\\u0000"), why)
    return refusal(None, "a NUL character in the query string")


def check_json_body(body: bytes) -> JSONResponse | None:
    """A 400 for bad text or nesting deeper than MAX_JSON_DEPTH in a JSON body, else None.
    Parses only a body that could hold either: an escaped NUL / surrogate, or more than
    MAX_JSON_DEPTH brackets in all (fewer can't nest that deep)."""
    suspect_text = _SUSPECT_JSON.search(body) is not None
    if not suspect_text and body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None  # not JSON: the route's own parser answers with a 400
    except RecursionError:  # deeper than Python's parser goes
        return too_deep(None)
    found = find_bad_text(data)
    if found is None:
        return None
    param, why = found
    return too_deep(param) if why == TOO_DEEP else refusal(param, why)


def too_deep(param: str | None) -> JSONResponse:
    where = f"Invalid value for '{param}': the" if param else "The"
    return JSONResponse(status_code=400, content={"error": {
        "message": f"{where} request nests objects and arrays more than {MAX_JSON_DEPTH} levels deep.",
        "type": "invalid_request_error", "param": param, "code": "nested_too_deeply"}})


def find_bad_text(data) -> tuple[str | None, str] | None:
    """(param path, why) of the first key or string value holding bad text, or of the first value
    nested deeper than MAX_JSON_DEPTH (why: TOO_DEEP), else None. Iterative, so any depth is safe."""
    stack = [("", data, 0)]
    while stack:
        path, value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return path or None, TOO_DEEP
        if isinstance(value, str):
            why = bad_text(value)
            if why is not None:
                return path or None, why
        elif isinstance(value, dict):
            for key in value:
                why = bad_text(key)
                if why is not None:
                    return _printable(f"{path}.{key}" if path else key), why
            stack.extend((f"{path}.{k}" if path else k, v, depth + 1) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in reversed(list(enumerate(value))))
    return None


def _printable(param: str) -> str:
    """A param path with its bad characters escaped, so the error message itself can be encoded."""
    return _BAD_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", param)
