"""Malformed training files, each with one known defect, for the "Bad input" figures.

    cases = generate()            # >= 1,000 Case objects, deterministic (seeded)
    report = data.validate_file(path, case.method)
    assert not failures(case, report)

Each Case knows the problem it must produce: (line, field, code). `line` is the 1-based
physical line (blank lines count), 0 for the file as a whole; `field` is the JSON path inside
the line, "" when the line or file as a whole is the problem (see ml/data/__init__.py's docstring).
A case passes when the report is not ok, holds that exact problem, names no line outside the
bad ones (good lines are not blamed), every problem has a code and a short message, and the
report kept every good example (nothing lost: `n_good`).

The per-line mutations (wrong types, roles, tool calls, DPO / RFT rules...) live in
malformed_mutations.py; this module adds the text-, byte- and file-level defects and assembles
the files.

Why here and not under bench/: bench/ holds benchmarks that print ratios against a baseline;
these files are test inputs with expected answers, used by pytest (tests/reliability/) and by
`make reliability`, which prints the figures RELIABILITY.md quotes (tools/reliability/figures.py).
"""

from __future__ import annotations

import bz2
import copy
import gzip
import io
import json
import lzma
import pickle
import random
import tarfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tools.reliability.malformed_mutations import METHODS, MUTATIONS, TOOLS, call, messages_of

# ml.jsonl's limits, restated so that a change there is noticed here
MAX_LINE_BYTES = 4 * 1024 * 1024  # a longer line is line_too_long
SNIFF_BYTES = 8192  # a NUL byte in the file's first 8 KB makes it binary_file; later, one invalid_json line


@dataclass(frozen=True)
class Case:
    name: str  # unique: category/what/variant
    category: str
    method: str  # ml.data method the file is validated as
    data: bytes
    line: int  # expected problem: 1-based line, 0 = the whole file
    field: str  # JSON path inside the line, "" = the whole line or file
    code: str
    n_good: int  # valid examples the report must keep (validate_file(..., keep_examples=True))
    bad_lines: frozenset[int]  # lines a problem may name (besides 0 for file-level ones)


def failures(case: Case, report) -> list[str]:
    """Why `report` (ml.types.ValidationReport) does not meet `case`; [] when it does."""
    out = []
    got = {(p.line, p.field, p.code) for p in report.problems}
    if report.ok:
        out.append("accepted")
    if (case.line, case.field, case.code) not in got:
        out.append(f"expected {(case.line, case.field, case.code)}, got {sorted(got)[:5]}")
    blamed = {p.line for p in report.problems} - case.bad_lines - {0}
    if blamed:
        out.append(f"good lines blamed: {sorted(blamed)[:5]}")
    if any(not p.code or p.line < 0 or len(p.message) > 400 or not p.message for p in report.problems):
        out.append("a problem without a code, with a bad line number or a missing/huge message")
    if len(report.examples) != case.n_good:
        out.append(f"kept {len(report.examples)} good examples, expected {case.n_good}")
    return out


# ---------------------------------------------------------------------------------------------
# Valid lines


def _supervised(i: int) -> list[dict]:
    return [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i}+{i}?"},
                      {"role": "assistant", "content": f"{2 * i}"}]},
        {"tools": copy.deepcopy(TOOLS), "messages": [
            {"role": "user", "content": f"Kitchen lights on ({i})"},
            {"role": "assistant", "content": None, "tool_calls": [call("call_1")]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"ok\": true}"},
            {"role": "assistant", "content": "Done, the kitchen lights are on."}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "part one "},
                                                   {"type": "text", "text": f"héllo ✓ 😀 {i}"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}]},
        {"messages": [{"role": "developer", "content": "Answer in French."},
                      {"role": "user", "content": "a", "name": "alice"},
                      {"role": "assistant", "content": "b", "weight": 0},
                      {"role": "user", "content": f"c{i}"}, {"role": "assistant", "content": "d", "weight": 1}]},
        {"tools": copy.deepcopy(TOOLS), "parallel_tool_calls": True, "messages": [
            {"role": "user", "content": "Lights on and temperature?"},
            {"role": "assistant", "tool_calls": [call("a"), call("b", "get_temp", "{}")]},
            {"role": "tool", "tool_call_id": "a", "content": "on"},
            {"role": "tool", "tool_call_id": "b", "content": "21"},
            {"role": "assistant", "content": f"On; it is {20 + i % 5} degrees."}]},
    ]


def _preference(i: int) -> list[dict]:
    return [
        {"input": {"messages": [{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": f"What is {i} plus {i}?"}]},
         "preferred_output": [{"role": "assistant", "content": f"{2 * i}."}],
         "non_preferred_output": [{"role": "assistant", "content": f"{2 * i + 1}."}]},
        {"input": {"tools": copy.deepcopy(TOOLS), "messages": [{"role": "user", "content": f"Kitchen on ({i})"}]},
         "preferred_output": [{"role": "assistant", "content": None, "tool_calls": [call("c1")]}],
         "non_preferred_output": [{"role": "assistant", "content": "I cannot do that."}]},
        {"input": {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                                {"role": "user", "content": f"Tell me a joke about {i}."}]},
         "preferred_completion": [{"role": "assistant", "content": "Why did the chicken cross the road?"}],
         "non_preferred_completion": [{"role": "assistant", "content": "No."}]},
    ]


def _reinforcement(i: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"What is {i} times 3?"}], "reference_answer": str(3 * i)},
        {"messages": [{"role": "developer", "content": "Answer with a number."},
                      {"role": "user", "content": f"{i} + 1 = ?"}],
         "tools": copy.deepcopy(TOOLS), "answer": i + 1, "meta": {"source": "unit", "tags": ["a", "b"]}},
        {"tools": copy.deepcopy(TOOLS), "messages": [
            {"role": "user", "content": "Lights?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [call("t1")]},
            {"role": "tool", "tool_call_id": "t1", "content": "on"},
            {"role": "user", "content": f"And now turn them off ({i})."}], "reference_answer": "off"},
    ]


BASES: dict[str, Callable[[int], list[dict]]] = {
    "supervised": _supervised, "preference": _preference, "reinforcement": _reinforcement}


def good_objects(method: str, n: int, start: int = 0) -> list[dict]:
    """n valid lines of `method`, cycling through its base shapes."""
    out = []
    for i in range(start, start + n):
        bases = BASES[method](i)
        out.append(bases[i % len(bases)])
    return out


def dumps(obj, rng: random.Random) -> str:
    return json.dumps(obj, ensure_ascii=rng.random() < 0.5)


# ---------------------------------------------------------------------------------------------
# Assembling files


def assemble(rng: random.Random, method: str, bad: bytes | list[bytes] | None, *, n_good: int | None = None,
             pos: int | None = None, blanks: int | None = None, crlf: bool | None = None,
             bom: bool | None = None, pad: int = 0) -> tuple[bytes, list[int], int]:
    """A file of `n_good` valid lines with the `bad` line(s) inserted at `pos`, random blank lines,
    line endings and a leading UTF-8 BOM (all accepted). Returns (bytes, the bad lines' physical
    numbers, n_good). `pad` adds that many characters to each good line (to push a later line past
    the binary sniff window)."""
    n_good = rng.randint(10, 16) if n_good is None else n_good
    goods = []
    for obj in good_objects(method, n_good, start=rng.randint(0, 50)):
        if pad:
            obj = {**obj, "padding": "p" * pad}
        goods.append(dumps(obj, rng).encode())
    bads = [] if bad is None else ([bad] if isinstance(bad, bytes) else list(bad))
    pos = rng.randint(0, n_good) if pos is None else pos
    rows: list[tuple[bytes, bool]] = [(g, False) for g in goods]
    rows[pos:pos] = [(b, True) for b in bads]
    for _ in range(rng.choice([0, 0, 1, 2]) if blanks is None else blanks):
        rows.insert(rng.randint(0, len(rows)), (rng.choice([b"", b"   ", b"\t"]), False))
    crlf = rng.random() < 0.2 if crlf is None else crlf
    bom = rng.random() < 0.1 if bom is None else bom
    sep = b"\r\n" if crlf else b"\n"
    data = (b"\xef\xbb\xbf" if bom else b"") + sep.join(r for r, _ in rows) + sep
    return data, [i + 1 for i, (_, is_bad) in enumerate(rows) if is_bad], n_good


class Builder:
    """Collects cases; names are unique and categories counted."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.cases: list[Case] = []
        self.names: Counter = Counter()

    def add(self, category: str, what: str, method: str, data: bytes, line: int, field: str, code: str,
            n_good: int, bad_lines: set[int] | None = None) -> None:
        key = f"{category}/{what}/{method}"
        self.names[key] += 1
        self.cases.append(Case(f"{key}/{self.names[key]}", category, method, data, line, field, code, n_good,
                               frozenset(bad_lines if bad_lines is not None else {line})))

    def line(self, category: str, what: str, method: str, bad: bytes, field: str, code: str, **kw) -> None:
        """One bad line among good ones."""
        data, (line,), n_good = assemble(self.rng, method, bad, **kw)
        self.add(category, what, method, data, line, field, code, n_good)

    def mutated(self, category: str, what: str, method: str, obj: dict, field: str, code: str, **kw) -> None:
        self.line(category, what, method, dumps(obj, self.rng).encode(), field, code, **kw)


def mutation_cases(b: Builder) -> None:
    """Every mutation on every base shape of every method it applies to."""
    for category, mutations in MUTATIONS.items():
        for what, mutate in mutations:
            for method in METHODS:
                for k, base in enumerate(BASES[method](b.rng.randint(0, 99))):
                    obj = copy.deepcopy(base)
                    got = mutate(obj, method)
                    if got is None:
                        continue
                    field, code = got
                    b.mutated(category, f"{what}@{k}", method, obj, field, code)


# ---------------------------------------------------------------------------------------------
# Line-level defects (text and bytes)


def valid_line(b: Builder, method: str) -> str:
    return dumps(good_objects(method, 1, start=b.rng.randint(0, 99))[0], b.rng)


BROKEN_JSON: list[tuple[str, Callable[[str], str]]] = [
    ("trailing_comma", lambda s: s[:-1] + ", }"),
    ("single_quotes", lambda s: s.replace('"', "'")),
    ("python_repr", lambda s: repr(json.loads(s))),
    ("unquoted_keys", lambda s: s.replace('"messages"', "messages").replace('"input"', "input")),
    ("comment", lambda s: s + " // the first example"),
    ("hash_comment", lambda s: "# " + s),
    ("two_objects", lambda s: s + s),
    ("two_objects_comma", lambda s: s + ", " + s),
    ("missing_close", lambda s: s[:-1]),
    ("extra_close", lambda s: s + "}"),
    ("sse_prefix", lambda s: "data: " + s),
    ("bare_words", lambda s: "hello world"),
    ("undefined", lambda s: "undefined"),
    ("lone_brace", lambda s: "}"),
    ("open_brace", lambda s: "{"),
    ("invalid_escape", lambda s: '{"messages": "\\x41"}'),
    ("raw_tab_in_string", lambda s: s.replace('": "', '": "\t', 1)),
    ("raw_newline_escape_cut", lambda s: '{"messages": "a\\'),
    ("true_capital", lambda s: s[:-1] + ', "flag": True}'),
    ("none_literal", lambda s: s[:-1] + ', "flag": None}'),
    ("leading_zero", lambda s: s[:-1] + ', "n": 007}'),
    ("hex_number", lambda s: s[:-1] + ', "n": 0x1F}'),
    ("plus_number", lambda s: s[:-1] + ', "n": +1}'),
    ("dot_number", lambda s: s[:-1] + ', "n": .5}'),
    ("missing_colon", lambda s: s.replace('": ', '" ', 1)),
    ("missing_comma", lambda s: s.replace(', "', ' "', 1)),
    ("nbsp_prefix", lambda s: "\u00a0" + s),
    ("yaml", lambda s: "messages: [{role: user}]"),
    ("markdown_fence", lambda s: "```json"),
]

NOT_OBJECT = [("array", lambda s: "[" + s + "]"), ("empty_array", lambda s: "[]"), ("string", lambda s: json.dumps(s)),
              ("number", lambda s: "42"), ("float", lambda s: "-1.5e3"), ("null", lambda s: "null"),
              ("true", lambda s: "true"), ("false", lambda s: "false")]


def json_text_cases(b: Builder) -> None:
    for method in METHODS:
        for what, fn in BROKEN_JSON:
            b.line("broken_json", what, method, fn(valid_line(b, method)).encode(), "", "invalid_json")
        for k in range(25):  # a line cut short at a random character (an interrupted export)
            s = valid_line(b, method)
            b.line("broken_json", "truncated", method, s[:b.rng.randint(1, len(s) - 1)].encode(), "", "invalid_json")
        for what, fn in NOT_OBJECT:
            b.line("not_object", what, method, fn(valid_line(b, method)).encode(), "", "not_an_object")


def with_extra(s: str, raw_value: str) -> bytes:
    """A valid line with one more top-level field whose JSON text is `raw_value`."""
    return (s[:-1] + ', "extra": ' + raw_value + "}").encode()


NUMBERS = [("nan", "NaN", "non_finite_number"), ("infinity", "Infinity", "non_finite_number"),
           ("minus_infinity", "-Infinity", "non_finite_number"), ("1e400", "1e400", "non_finite_number"),
           ("minus_1e999", "-1e999", "non_finite_number"), ("1e309", "1.0e309", "non_finite_number"),
           ("big_float_digits", "9" * 400 + ".0", "non_finite_number"),
           ("int_4301_digits", "1" * 4301, "number_too_large"),
           ("int_minus_5000", "-" + "7" * 5000, "number_too_large"),
           ("int_100k_digits", "3" * 100_000, "number_too_large")]


def value_cases(b: Builder) -> None:
    for method in METHODS:
        for what, raw, code in NUMBERS:
            b.line("numbers", what, method, with_extra(valid_line(b, method), raw), "", code)
            s = valid_line(b, method)  # in place of a real field's value
            b.line("numbers", what + "_in_place", method, s.replace("[", "[" + raw + ", ", 1).encode(), "", code)
        for what, raw in [("top", '{"messages": [], "messages": []}'),
                          ("top_any", None), ("in_message", None), ("in_part", None), ("escaped_same_key", None)]:
            if raw is None:
                s = valid_line(b, method)
                if what == "top_any":
                    raw = s[:-1] + ', "extra": 1, "extra": 2}'
                elif what == "in_message":
                    raw = s.replace('"role": ', '"role": "user", "role": ', 1)
                elif what == "in_part":
                    raw = s[:-1] + ', "meta": {"a": {"b": 1, "b": 1}}}'
                else:
                    raw = s[:-1] + ', "x": {"Key": 1, "key": 2, "k\\u0065y": 3}}'
            b.line("duplicate_keys", what, method, raw.encode(), "", "duplicate_key")
        for what, esc in [("high", "\\ud800"), ("low", "\\udc00"), ("high_then_text", "\\ud83dX"),
                          ("reversed_pair", "\\ude00\\ud83d"), ("two_highs", "\\ud83d\\ud83d"),
                          ("high_at_end", "ok\\udbff")]:
            s = valid_line(b, method)
            b.line("surrogates", what, method, (s[:-1] + f', "note": "{esc}"}}').encode(), "", "invalid_unicode")
            b.line("surrogates", what + "_in_key", method, (s[:-1] + f', "k{esc}": 1}}').encode(), "",
                   "invalid_unicode")


INVALID_UTF8 = [("ff", b"\xff"), ("fe", b"\xfe"), ("c3_28", b"\xc3\x28"), ("continuation", b"\xa0\xa1"),
                ("e2_28_a1", b"\xe2\x28\xa1"), ("f0_28", b"\xf0\x28\x8c\xbc"), ("overlong_slash", b"\xc0\xaf"),
                ("overlong_3", b"\xe0\x80\xaf"), ("cut_3byte", b"\xe2\x82"), ("latin1_e_acute", b"caf\xe9"),
                ("cp1252_quotes", b"\x93hi\x94"), ("surrogate_bytes", b"\xed\xa0\x80"),
                ("cesu8_emoji", b"\xed\xa0\xbd\xed\xb8\x80"), ("above_10ffff", b"\xf4\x90\x80\x80")]


def encoding_cases(b: Builder) -> None:
    for method in METHODS:
        for what, raw in INVALID_UTF8:
            s = valid_line(b, method).encode()
            b.line("invalid_utf8", what, method, s[:-1] + b', "note": "' + raw + b'"}', "", "invalid_utf8")
        # BOMs: one at the start is fine (not a defect); anywhere else it is
        s = valid_line(b, method)
        data, (line,), n = assemble(b.rng, method, ("\ufeff" + s).encode(), pos=0, bom=True, blanks=0)
        b.add("bom", "double_bom_at_start", method, data, line, "", "invalid_json", n)
        for _ in range(3):
            b.line("bom", "bom_mid_file", method, ("\ufeff" + valid_line(b, method)).encode(), "", "invalid_json",
                   pos=b.rng.randint(1, 9), bom=False)
        b.line("bom", "bom_and_bad_line", method, b"{oops", "", "invalid_json", bom=True, pos=b.rng.randint(1, 9))
        text = "\n".join(json.dumps(o) for o in good_objects(method, 12)) + "\n"
        for what, enc in [("utf16", "utf-16"), ("utf16_be_bom", "utf-16-be"), ("utf32", "utf-32")]:
            data = text.encode(enc) if enc != "utf-16-be" else b"\xfe\xff" + text.encode(enc)
            b.add("bom", what, method, data, 1, "", "unsupported_encoding", 0)
        for what, enc in [("utf16le_no_bom", "utf-16-le"), ("utf16be_no_bom", "utf-16-be"),
                          ("utf32le_no_bom", "utf-32-le")]:
            b.add("bom", what, method, text.encode(enc), 1, "", "binary_file", 0)


def nul_cases(b: Builder) -> None:
    for method in METHODS:
        for what, fn in [("in_string", lambda s: s.replace('": "', '": "\x00', 1)),
                         ("at_start", lambda s: "\x00" + s), ("at_end", lambda s: s + "\x00"),
                         ("many", lambda s: "\x00" * 64)]:
            # inside the first 8 KB the file is sniffed as binary (that line is named); later it is one bad line
            data, (line,), n = assemble(b.rng, method, fn(valid_line(b, method)).encode())
            if data.index(b"\x00") < SNIFF_BYTES:
                b.add("nul_bytes", what, method, data, line, "", "binary_file", 0)
            else:
                b.add("nul_bytes", what + "_past_sniff", method, data, line, "", "invalid_json", n)
        for what, fn in [("late_in_string", lambda s: s.replace('": "', '": "\x00', 1)),
                         ("late_at_end", lambda s: s + "\x00")]:
            # past the sniff window it is one bad line among good ones
            data, (line,), n = assemble(b.rng, method, fn(valid_line(b, method)).encode(), n_good=12, pos=12,
                                        pad=1000)
            b.add("nul_bytes", what, method, data, line, "", "invalid_json", n)


# ---------------------------------------------------------------------------------------------
# Whole-file defects


def _jsonl(method: str, n: int = 12) -> bytes:
    return ("\n".join(json.dumps(o) for o in good_objects(method, n)) + "\n").encode()


def _archives(payload: bytes) -> Iterator[tuple[str, bytes]]:
    for what, comp in [("zip_stored", zipfile.ZIP_STORED), ("zip_deflated", zipfile.ZIP_DEFLATED),
                       ("zip_bzip2", zipfile.ZIP_BZIP2), ("zip_lzma", zipfile.ZIP_LZMA)]:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=comp) as z:
            z.writestr("train.jsonl", payload)
        yield what, buf.getvalue()
    yield "gzip", gzip.compress(payload)
    yield "bzip2", bz2.compress(payload)
    yield "xz", lzma.compress(payload)
    for what, mode in [("tar", "w"), ("tar_gz", "w:gz")]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as t:
            info = tarfile.TarInfo("train.jsonl")
            info.size = len(payload)
            t.addfile(info, io.BytesIO(payload))
        yield what, buf.getvalue()


HEADS = [("pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"),
         ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
         ("7z", b"7z\xbc\xaf\x27\x1c\x00\x04"), ("parquet", b"PAR1\x15\x04\x15"),
         ("elf", b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8), ("sqlite", b"SQLite format 3\x00\x10\x00"),
         ("npy", b"\x93NUMPY\x01\x00v\x00{'descr': '<f4'}"), ("wasm", b"\x00asm\x01\x00\x00\x00")]


def nul_line(data: bytes) -> int:
    """The line holding the first NUL byte (how ml.jsonl names a binary file's line)."""
    return data.count(b"\n", 0, data.index(b"\x00")) + 1


def file_cases(b: Builder) -> None:
    for method in METHODS:
        for what, data in _archives(_jsonl(method)):
            line = 1 if data[:4] in (b"PK\x03\x04",) or data[:2] == b"\x1f\x8b" or data[:3] == b"BZh" \
                or data[:5] == b"\xfd7zXZ" else nul_line(data)
            b.add("binary", what, method, data, line, "", "binary_file", 0)
        for what, head in HEADS:
            data = head + bytes(b.rng.randrange(256) for _ in range(2000))
            magic = what in ("pdf", "png", "jpeg", "7z", "parquet")
            b.add("binary", what, method, data, 1 if magic else nul_line(data), "", "binary_file", 0)
        pickled = pickle.dumps([json.loads(x) for x in _jsonl(method).splitlines()])
        b.add("binary", "pickle", method, pickled, nul_line(pickled), "", "binary_file", 0)
        noise = bytes(b.rng.randrange(256) for _ in range(4096)) + b"\x00"
        b.add("binary", "random_bytes", method, noise, nul_line(noise), "", "binary_file", 0)
        text_then_binary = _jsonl(method, 3) + b"\x00\x01\x02"
        b.add("binary", "text_then_binary", method, text_then_binary, 4, "", "binary_file", 0)

        # too few examples: the file as a whole (line 0, no field)
        for n in range(1, 10):
            data, _, _ = assemble(b.rng, method, None, n_good=n)
            b.add("too_few", f"{n}_examples", method, data, 0, "", "too_few_examples", n, set())
        data, _, _ = assemble(b.rng, method, None, n_good=9, blanks=0)
        data = data.replace(b"\n", b"\n\n\n")  # many blank lines do not count as examples
        b.add("too_few", "9_with_blank_lines", method, data, 0, "", "too_few_examples", 9, set())
        data, (line,), _ = assemble(b.rng, method, b"{broken", n_good=5, blanks=0)
        b.add("too_few", "5_good_1_bad", method, data, line, "", "invalid_json", 5, {line})
        b.add("too_few", "5_good_1_bad_count", method, data, 0, "", "too_few_examples", 5, {line})
        for what, data in [("empty", b""), ("newlines", b"\n\n\n"), ("spaces", b"   "), ("crlf", b"\r\n\r\n"),
                           ("bom_only", b"\xef\xbb\xbf"), ("bom_newline", b"\xef\xbb\xbf\n")]:
            b.add("too_few", what, method, data, 0, "", "empty_file", 0, set())

        # the wrong method's file: every line is missing this method's required field
        other = {"supervised": "preference", "preference": "supervised", "reinforcement": "preference"}[method]
        field = {"supervised": "messages", "preference": "input", "reinforcement": "messages"}[method]
        data = _jsonl(other)
        b.add("wrong_method", f"{other}_file", method, data, 1, field, "missing_field", 0, set(range(1, 13)))

        # many bad lines: the first ones are listed, then one too_many_problems
        data, lines, n = assemble(b.rng, method, [b"{bad"] * 150, n_good=10, pos=3, blanks=0)
        b.add("many_bad_lines", "150_bad", method, data, lines[0], "", "invalid_json", n, set(lines))
        b.add("many_bad_lines", "150_bad_count", method, data, 0, "", "too_many_problems", n, set(lines))


def overlong_cases(b: Builder) -> None:
    """Lines past MAX_LINE_BYTES: one per method with content just over the cap (4 MB each)."""
    for method in METHODS:
        obj = good_objects(method, 1)[0]
        s = json.dumps(obj)
        pad = MAX_LINE_BYTES + 1 - len(s) - len(', "big": ""')
        b.line("overlong_line", "just_over_4mb", method, with_extra(s, json.dumps("y" * pad)), "", "line_too_long")
    s = json.dumps(good_objects("supervised", 1)[0])
    data, _, n = assemble(b.rng, "supervised", None, bom=False)
    data += (s[:-1] + ', "big": "' + "z" * MAX_LINE_BYTES).encode()  # the last line, cut off, no newline
    b.add("overlong_line", "unterminated_last_line", "supervised", data, data.count(b"\n") + 1, "",
          "line_too_long", n)


def nesting_cases(b: Builder) -> None:
    for method in METHODS:
        for depth in (64, 65, 100, 500, 990, 1000, 5000, 100_000):
            s = valid_line(b, method)
            b.line("deep_nesting", f"list_{depth}", method, with_extra(s, "[" * depth + "]" * depth), "",
                   "too_deeply_nested")
        for depth in (64, 300, 20_000):
            s = valid_line(b, method)
            b.line("deep_nesting", f"dict_{depth}", method, with_extra(s, '{"a": ' * depth + "1" + "}" * depth), "",
                   "too_deeply_nested")
        for depth in (70, 3000, 1_000_000):
            b.line("deep_nesting", f"top_array_{depth}", method, ("[" * depth + "]" * depth).encode(), "",
                   "too_deeply_nested")
        b.line("deep_nesting", "unclosed_200k", method, ("[" * 200_000).encode(), "", "too_deeply_nested")
        obj = good_objects(method, 1, start=b.rng.randint(0, 99))[0]
        nested: object = "deep"
        for _ in range(80):
            nested = [nested]
        messages_of(obj, method)[0][0]["content"] = nested
        b.mutated("deep_nesting", "in_content", method, obj, "", "too_deeply_nested")


def generate(seed: int = 0) -> list[Case]:
    """All cases, deterministic for a seed."""
    b = Builder(seed)
    for add in (mutation_cases, json_text_cases, value_cases, encoding_cases, nul_cases, file_cases,
                overlong_cases, nesting_cases):
        add(b)
    return b.cases


def sample(cases: list[Case], per_category: int, seed: int = 0, max_bytes: int = 1 << 20) -> list[Case]:
    """A stratified sample: up to `per_category` cases of each category, taken in turn from each
    method and, within a method, different kinds of defect first; files over max_bytes skipped."""
    rng = random.Random(seed)
    out = []
    for category in sorted({c.category for c in cases}):
        queues = {}
        for method in METHODS:
            items = [c for c in cases if c.category == category and c.method == method and len(c.data) <= max_bytes]
            rng.shuffle(items)
            kinds = [c.name.split("/")[1].split("@")[0] for c in items]
            firsts = [c for i, c in enumerate(items) if kinds[i] not in kinds[:i]]
            queues[method] = firsts + [c for c in items if c not in firsts]
        picked: list[Case] = []
        while len(picked) < per_category and any(queues.values()):
            for method in METHODS:
                if queues[method] and len(picked) < per_category:
                    picked.append(queues[method].pop(0))
        out += picked
    return out
