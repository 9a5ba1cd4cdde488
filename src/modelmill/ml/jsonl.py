"""Strict, bounded reading of JSONL uploads (training, validation and eval files).

The standard library does the parsing; this module only adds what an upload service needs
on top of `json.loads`, and why:
- strictness: NaN/Infinity (and 1e999, which parses to inf), integers longer than Python
  converts (4300 digits) and duplicate keys are rejected, lone UTF-16 surrogates are rejected
  (they crash the tokenizer later), nesting is bounded;
- bounded memory: lines are read with a byte cap (a 2 GB single line is skipped in chunks,
  never held), so a hostile file costs at most MAX_LINE_BYTES at a time, plus what json.loads
  builds from one line (RELIABILITY.md "Bad input" has the measured worst case); the depth
  check after parsing holds one nesting level's containers at a time, not one entry per value;
- binary sniffing: zip/gzip/PDF/... magic, NUL bytes and UTF-16/32 byte-order marks are
  reported once, instead of one garbage problem per "line" of a binary file.

Every problem is a LineProblem (1-based line, "" field, a code). Blank lines are skipped (line
numbers still count them) and a UTF-8 byte-order mark at the start of the file is accepted.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from modelmill.ml.types import LineProblem

MAX_LINE_BYTES = 4 * 1024 * 1024  # one line longer than this is reported (line_too_long), not parsed
MAX_DEPTH = 64  # JSON nesting allowed inside one line (tool parameter schemas need ~10-20)
SNIFF_BYTES = 8192  # how much of the file head is checked for binary content

BINARY_MAGIC = {
    b"PK\x03\x04": "a zip archive",
    b"\x1f\x8b": "a gzip archive",
    b"%PDF": "a PDF document",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"7z\xbc\xaf": "a 7z archive",
    b"BZh": "a bzip2 archive",
    b"\xfd7zXZ": "an xz archive",
    b"PAR1": "a Parquet file",
}
UTF16_32_BOMS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff", b"\xff\xfe", b"\xfe\xff")
UTF8_BOM = b"\xef\xbb\xbf"
# A \uD800-\uDFFF escape in JSON text: the only way a parsed string can hold a lone surrogate
# (raw surrogate bytes are invalid UTF-8). Lines without one skip the surrogate scan.
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")
# Python refuses to convert longer integer literals (sys.get_int_max_str_digits, CVE-2020-10735).
MAX_INT_DIGITS = sys.get_int_max_str_digits() or 4300


class JsonlReader:
    """Iterate a binary file as (line, object, None) or (line, None, problem), blank lines skipped.

    After iterating, `lines_read` is the number of physical lines and `binary` tells whether the
    file was rejected as a whole (then exactly one problem was yielded and nothing else).
    """

    def __init__(self, f: BinaryIO):
        self.f = f
        self.lines_read = 0
        self.binary = False

    def __iter__(self) -> Iterator[tuple[int, dict | None, LineProblem | None]]:
        problem = sniff(self.f)
        if problem is not None:
            self.binary = True
            yield problem.line, None, problem
            return
        for line, raw, size in self._raw_lines():
            self.lines_read = line
            if raw is None:
                yield line, None, LineProblem(line, "", "line_too_long",
                                              f"line is {size} bytes; the limit is {MAX_LINE_BYTES} bytes")
                continue
            if line == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            if not raw.strip():
                continue
            obj, problem = parse_line(raw, line)
            yield line, obj, problem

    def _raw_lines(self) -> Iterator[tuple[int, bytes | None, int]]:
        """(line number, bytes without the newline or None when over MAX_LINE_BYTES, byte size)."""
        lineno = 0
        while True:
            chunk = self.f.readline(MAX_LINE_BYTES + 1)
            if not chunk:
                return
            lineno += 1
            if len(chunk) > MAX_LINE_BYTES and not chunk.endswith(b"\n"):
                size = len(chunk)
                while not chunk.endswith(b"\n"):  # skip the rest of the line in bounded chunks
                    chunk = self.f.readline(1 << 20)
                    if not chunk:
                        break
                    size += len(chunk)
                yield lineno, None, size - chunk.endswith(b"\n")
                continue
            yield lineno, chunk.rstrip(b"\r\n"), len(chunk)


def sniff(f: BinaryIO) -> LineProblem | None:
    """A problem when the file head is binary or UTF-16/32, else None. Rewinds the file."""
    head = f.read(SNIFF_BYTES)
    f.seek(0)
    if head.startswith(UTF16_32_BOMS):
        return LineProblem(1, "", "unsupported_encoding", "file is UTF-16/UTF-32 encoded; it must be UTF-8 JSONL")
    for magic, what in BINARY_MAGIC.items():
        if head.startswith(magic):
            return LineProblem(1, "", "binary_file", f"file looks like {what}, not UTF-8 JSONL text")
    nul = head.find(b"\x00")
    if nul >= 0:
        return LineProblem(head.count(b"\n", 0, nul) + 1, "", "binary_file",
                           "file contains NUL bytes: it looks binary, not UTF-8 JSONL text")
    return None


def parse_line(raw: bytes, line: int) -> tuple[dict | None, LineProblem | None]:
    """Decode one line strictly into a JSON object, or say why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, LineProblem(line, "", "invalid_utf8", f"invalid UTF-8 at byte {e.start} of the line")
    try:
        obj = strict_json_loads(text)
    except StrictJSONError as e:
        return None, LineProblem(line, "", e.code, e.message)
    except RecursionError:
        return None, LineProblem(line, "", "too_deeply_nested", f"JSON is nested deeper than {MAX_DEPTH} levels")
    except json.JSONDecodeError as e:  # its own "line 1 column 5" would be confusing inside line 7
        if "\x00" in text:
            return None, LineProblem(line, "", "invalid_json", "invalid JSON: the line contains a NUL byte "
                                                               "(raw control characters are not allowed)")
        msg = e.msg[:-3] if e.msg.endswith(" at") else e.msg  # "Invalid control character at"
        return None, LineProblem(line, "", "invalid_json", f"invalid JSON: {msg} at column {e.colno}")
    except ValueError as e:  # not expected from json.loads with these hooks; kept so nothing escapes
        return None, LineProblem(line, "", "invalid_json", f"invalid JSON: {str(e)[:200]}")
    scan = scan_value(obj, text)
    if scan is not None:
        return None, LineProblem(line, "", *scan)
    if not isinstance(obj, dict):
        return None, LineProblem(line, "", "not_an_object", f"expected a JSON object, got {type_name(obj)}")
    return obj, None


class StrictJSONError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def strict_json_loads(text: str) -> Any:
    """json.loads that rejects NaN/Infinity (also 1e999) and duplicate object keys.

    Raises StrictJSONError (a ValueError with .code) for those and for integers of more than
    MAX_INT_DIGITS digits (code "number_too_large"), ValueError for other bad JSON and
    RecursionError for absurd nesting. It does not bound depth or look for lone surrogates:
    scan_value does that on the result.
    """
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant,
                      parse_float=_finite_float, parse_int=_bounded_int)


def type_name(v: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if v is None:
        return "null"
    for t, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
                    (dict, "object")):
        if isinstance(v, t):
            return name
    return type(v).__name__


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj: dict = {}
    for k, v in pairs:
        if k in obj:
            raise StrictJSONError("duplicate_key", f"duplicate key {k[:60]!r} in a JSON object")
        obj[k] = v
    return obj


def _reject_constant(name: str) -> float:
    raise StrictJSONError("non_finite_number", f"{name} is not valid JSON (numbers must be finite)")


def _bounded_int(s: str) -> int:
    if len(s) > MAX_INT_DIGITS and len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise StrictJSONError("number_too_large", f"an integer has {len(s.lstrip('-'))} digits; "
                                                  f"at most {MAX_INT_DIGITS} are allowed")
    return int(s)


def _finite_float(s: str) -> float:
    x = float(s)
    if not math.isfinite(x):
        raise StrictJSONError("non_finite_number", f"number {s[:40]} is out of range (numbers must be finite)")
    return x


def scan_value(obj: Any, text: str | None = None) -> tuple[str, str] | None:
    """(code, message) when a parsed value nests deeper than MAX_DEPTH or holds a lone surrogate.

    `text`, the JSON it was parsed from, lets common lines skip both checks: without more than
    MAX_DEPTH brackets it cannot be too deep, and without a \\uD8xx-\\uDFxx escape it cannot hold
    a lone surrogate. The depth walk goes one level at a time and holds only references to the
    next level's containers (a 4 MB line of a million `{}` costs a list of pointers); the
    surrogate check is one C-speed encode of the re-serialised value.
    """
    check_depth = text is None or text.count("[") + text.count("{") > MAX_DEPTH
    check_strings = text is None or _SURROGATE_ESCAPE_RE.search(text) is not None
    level, depth = ([obj] if check_depth and isinstance(obj, (dict, list)) else []), 1
    while level:
        if depth > MAX_DEPTH:
            return "too_deeply_nested", f"JSON is nested deeper than {MAX_DEPTH} levels"
        below: list = []
        for node in level:
            below += [v for v in (node.values() if isinstance(node, dict) else node) if isinstance(v, (dict, list))]
        level, depth = below, depth + 1
    if check_strings:
        try:  # a parsed string holds a surrogate code point only when its escape was unpaired
            json.dumps(obj, ensure_ascii=False, check_circular=False).encode("utf-8")
        except UnicodeEncodeError:
            return "invalid_unicode", "a string contains an unpaired UTF-16 surrogate escape (e.g. \\ud800)"
    return None
