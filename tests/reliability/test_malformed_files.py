"""Bad input at the ml level: every file of the malformed corpus (tools/reliability/malformed.py,
over 1,000 files) is rejected by ml.data.validate_file with the expected code, line and field,
good lines are neither blamed nor lost, and memory stays bounded, also for a 50 MB single line
and a million-deep nesting."""

from __future__ import annotations

import json
import tracemalloc
from collections import Counter

from modelmill.ml import data
from tools.reliability.malformed import METHODS, failures, good_objects

# The kinds of bad input the brief names, as corpus categories.
REQUIRED_CATEGORIES = {
    "broken_json", "not_object", "wrong_types", "roles", "empty_content", "overlong_line", "tool_calls",
    "preference", "reinforcement", "deep_nesting", "numbers", "duplicate_keys", "surrogates", "nul_bytes",
    "bom", "invalid_utf8", "binary", "too_few", "wrong_method", "many_bad_lines",
}
MiB = 1024 * 1024


def test_corpus_covers_every_kind_of_bad_input(malformed_cases):
    assert len(malformed_cases) >= 1000
    assert len({c.name for c in malformed_cases}) == len(malformed_cases)
    categories = Counter(c.category for c in malformed_cases)
    assert set(categories) == REQUIRED_CATEGORIES, categories
    assert min(categories.values()) >= 3, categories
    methods = Counter(c.method for c in malformed_cases)
    assert all(methods[m] >= 200 for m in METHODS), methods
    assert len({c.code for c in malformed_cases}) >= 30  # most of ml.data's documented codes are exercised


def test_every_malformed_file_is_rejected_with_line_field_and_code(malformed_cases, tmp_path):
    path = tmp_path / "case.jsonl"
    wrong, kept, expected_kept, peak = {}, 0, 0, 0
    for case in malformed_cases:
        path.write_bytes(case.data)
        big = len(case.data) > MiB  # traced, to bound memory: the 4 MB lines, the million-deep nesting
        if big:
            tracemalloc.start()
        report = data.validate_file(path, case.method)
        if big:
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        if problems := failures(case, report):
            wrong[case.name] = problems
        kept += len(report.examples)
        expected_kept += case.n_good
    assert not wrong, dict(list(wrong.items())[:20])
    assert kept == expected_kept  # every good example in a file with a bad line was still read
    assert 0 < peak < 32 * MiB, f"peak traced memory {peak / MiB:.1f} MiB"


def _peak_validating(path, method: str = "supervised"):
    tracemalloc.start()
    try:
        report = data.validate_file(path, method)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return report, peak


def _good_lines(n: int = 11) -> bytes:
    return "".join(json.dumps(o) + "\n" for o in good_objects("supervised", n)).encode()


def test_50_mb_single_line_is_skipped_in_bounded_memory(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(_good_lines())
        f.write(b'{"messages": [{"role": "user", "content": "')
        for _ in range(50):
            f.write(b"x" * MiB)
        f.write(b'"}]}\n')
        f.write(_good_lines(2))
    report, peak = _peak_validating(path)
    assert [(p.line, p.field, p.code) for p in report.problems] == [(12, "", "line_too_long")]
    assert len(report.examples) == 13  # the lines after it are still read
    assert peak < 12 * MiB, f"{peak / MiB:.1f} MiB"  # one 4 MB read buffer plus its decode, not 50 MB


def test_million_deep_nesting_is_rejected_in_bounded_memory(tmp_path):
    deep = 1_000_000
    args = {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": "[" * deep}}]}
    path = tmp_path / "deep.jsonl"
    path.write_bytes(_good_lines() + b"[" * deep + b"]" * deep + b"\n" + b'{"":' * deep + b"\n"
                     + json.dumps({"messages": [{"role": "user", "content": "x"}, args]}).encode() + b"\n")
    report, peak = _peak_validating(path)
    assert [(p.line, p.field, p.code) for p in report.problems] == [
        (12, "", "too_deeply_nested"), (13, "", "too_deeply_nested"),
        (14, "messages[1].tool_calls[0].function.arguments", "invalid_arguments")]
    assert len(report.examples) == 11
    assert peak < 24 * MiB, f"{peak / MiB:.1f} MiB"
