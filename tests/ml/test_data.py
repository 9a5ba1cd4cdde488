"""Training-file validation: valid lines pass, every kind of bad line or file is reported with
its line number, field path and code, and nothing crashes the validator."""

from __future__ import annotations

import copy
import gzip
import io
import json
import zipfile
from pathlib import Path

import jsonschema
import pytest

from modelmill.errors import DataValidationError, InvalidRequestError
from modelmill.ml import data, jsonl
from modelmill.ml.data.methods import validate_supervised_line
from modelmill.ml.types import ChatExample, LineProblem
from tools.datasets import LIGHT_TOOLS as TOOLS, tool_call as call

SPEC = Path("/work/shared/spec/openai-training-data-schemas.json")


def valid_examples() -> list[dict]:
    """A spread of valid SFT lines (each also valid under OpenAI's FineTuneChatRequestInput)."""
    return [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "part one "},
                                                   {"type": "text", "text": "part two"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
                      {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "weight": 1}]},
        {"tools": TOOLS, "messages": [
            {"role": "user", "content": "Kitchen lights on"},
            {"role": "assistant", "content": None, "tool_calls": [call("call_1")]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"ok\": true}"},
            {"role": "assistant", "content": "Done, the kitchen lights are on."}]},
        {"tools": TOOLS, "parallel_tool_calls": True, "messages": [
            {"role": "user", "content": "Lights on and temperature?"},
            {"role": "assistant", "tool_calls": [call("a"), call("b", "get_temp", "{}")]}]},
        {"tools": TOOLS, "parallel_tool_calls": False, "messages": [
            {"role": "user", "content": "Temperature?", "name": "alice"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [call("t1", "get_temp", "{}")]}]},
        {"messages": [{"role": "user", "content": "héllo ✓ 😀"}, {"role": "assistant", "content": "ok"}],
         "metadata": {"source": "unit"}},  # unknown top-level keys are allowed, as in OpenAI's schema
        {"messages": [{"role": "user", "content": "no tools declared"},
                      {"role": "assistant", "tool_calls": [call("x", "anything_goes", '{"a": [1, 2.5]}')]}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 1}]},
    ]


def write(tmp_path: Path, lines, name: str = "train.jsonl") -> Path:
    p = tmp_path / name
    if isinstance(lines, bytes):
        p.write_bytes(lines)
    else:
        p.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return p


def good_lines(n: int = 12) -> list:
    ex = valid_examples()
    return [ex[i % len(ex)] for i in range(n)]


def problems_of(tmp_path: Path, lines, **kw) -> list[LineProblem]:
    return data.validate_file(write(tmp_path, lines), **kw).problems


def triples(problems) -> list[tuple]:
    return [(p.line, p.field, p.code) for p in problems]


# ------------------------------------------------------------------------------------------- valid


def test_valid_file_passes_and_keeps_examples(tmp_path):
    report = data.validate_file(write(tmp_path, good_lines(12)))
    assert report.ok, report.problems
    assert report.method == "supervised" and report.n_lines == 12
    assert len(report.examples) == 12 and all(isinstance(e, ChatExample) for e in report.examples)
    assert [e.line for e in report.examples] == list(range(1, 13))
    tool_ex = report.examples[4]
    assert tool_ex.tools == TOOLS and tool_ex.messages[1]["tool_calls"][0]["id"] == "call_1"
    assert report.examples[6].parallel_tool_calls is False and report.examples[0].parallel_tool_calls is None


def test_read_examples_returns_examples_or_raises(tmp_path):
    assert len(data.read_examples(write(tmp_path, good_lines(10)))) == 10
    lines = good_lines(12)
    lines[3] = "{nope"
    with pytest.raises(DataValidationError) as ei:
        data.read_examples(write(tmp_path, lines))
    assert ei.value.problems[0].line == 4 and "line 4" in str(ei.value)
    assert isinstance(ei.value, ValueError) and ei.value.param == "training_file"


def test_developer_role_is_accepted(tmp_path):
    lines = good_lines(11) + [{"messages": [{"role": "developer", "content": "Be terse."},
                                            {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}]
    assert problems_of(tmp_path, lines) == []


def test_bom_crlf_and_blank_lines(tmp_path):
    body = "\r\n".join(json.dumps(x) for x in good_lines(10)) + "\r\n"
    body = body.replace("\r\n", "\r\n\r\n   \r\n", 1)  # blank lines after line 1 are skipped
    report = data.validate_file(write(tmp_path, b"\xef\xbb\xbf" + body.encode()))
    assert report.ok, report.problems
    assert len(report.examples) == 10 and report.examples[1].line == 4  # physical line numbers


def test_tools_not_a_list_does_not_flag_every_call(tmp_path):
    lines = good_lines(12)
    lines[6] = mutate(4, _set(["tools"], TOOLS[0]))
    assert triples(problems_of(tmp_path, lines)) == [(7, "tools", "invalid_type")]


def test_keep_examples_false(tmp_path):
    report = data.validate_file(write(tmp_path, good_lines(12)), keep_examples=False)
    assert report.ok and report.examples == [] and report.n_examples == 12
    lines = good_lines(12)
    lines[3] = "{oops"
    assert data.validate_file(write(tmp_path, lines), keep_examples=False).n_examples == 11


# ------------------------------------------------------------------------------------ bad lines


def mutate(index: int, fn):
    ex = copy.deepcopy(valid_examples()[index])
    fn(ex)
    return ex


def _set(path: list, value):
    def fn(ex):
        node = ex
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return fn


def _del(path: list):
    def fn(ex):
        node = ex
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
    return fn


# (id, line content (dict or raw str), expected (field, code) of the first problem)
BAD_LINES = [
    ("not_json", "{this is not json", ("", "invalid_json")),
    ("truncated_json", '{"messages": [', ("", "invalid_json")),
    ("array_line", "[1, 2]", ("", "not_an_object")),
    ("string_line", '"hello"', ("", "not_an_object")),
    ("nan", '{"messages": [], "x": NaN}', ("", "non_finite_number")),
    ("infinity", '{"x": -Infinity}', ("", "non_finite_number")),
    ("huge_float", '{"x": 1e400}', ("", "non_finite_number")),
    ("duplicate_key", '{"messages": [], "messages": []}', ("", "duplicate_key")),
    ("nested_duplicate_key", '{"messages": [{"role": "user", "role": "assistant", "content": "x"}]}',
     ("", "duplicate_key")),
    ("deep_nesting_recursion", "[" * 200_000 + "]" * 200_000, ("", "too_deeply_nested")),
    ("deep_nesting_scan", '{"x": ' + "[" * 70 + "]" * 70 + "}", ("", "too_deeply_nested")),
    ("huge_integer", '{"x": ' + "1" * 5000 + "}", ("", "number_too_large")),
    ("nul_byte_late", '{"x": "' + "a" * 9000 + '\x00"}', ("", "invalid_json")),
    ("lone_surrogate", '{"messages": [{"role": "user", "content": "\\ud800"}]}', ("", "invalid_unicode")),
    ("missing_messages", {"msgs": []}, ("messages", "missing_field")),
    ("messages_not_list", {"messages": {"role": "user"}}, ("messages", "invalid_type")),
    ("empty_messages", {"messages": []}, ("messages", "empty_array")),
    ("message_not_object", mutate(0, _set(["messages", 0], "hi")), ("messages[0]", "invalid_type")),
    ("unknown_role", mutate(1, _set(["messages", 2, "role"], "bot")), ("messages[2].role", "unknown_role")),
    ("role_not_string", mutate(0, _set(["messages", 0, "role"], 3)), ("messages[0].role", "invalid_type")),
    ("missing_role", mutate(0, _del(["messages", 0, "role"])), ("messages[0].role", "missing_field")),
    ("function_role", mutate(0, _set(["messages", 0, "role"], "function")), ("messages[0].role", "unsupported_role")),
    ("no_assistant", {"messages": [{"role": "user", "content": "x"}]}, ("messages", "no_assistant_target")),
    ("all_weight_zero", mutate(3, _set(["messages", 3, "weight"], 0)), ("messages", "no_assistant_target")),
    ("weight_two", mutate(3, _set(["messages", 3, "weight"], 2)), ("messages[3].weight", "invalid_weight")),
    ("weight_bool", mutate(3, _set(["messages", 3, "weight"], True)), ("messages[3].weight", "invalid_weight")),
    ("weight_float", mutate(3, _set(["messages", 3, "weight"], 0.5)), ("messages[3].weight", "invalid_weight")),
    ("weight_on_user", mutate(0, _set(["messages", 0, "weight"], 1)), ("messages[0].weight", "weight_not_allowed")),
    ("unknown_message_key", mutate(0, _set(["messages", 1, "wieght"], 0)), ("messages[1].wieght", "unknown_key")),
    ("function_call", mutate(0, _set(["messages", 1, "function_call"], {"name": "f", "arguments": "{}"})),
     ("messages[1].function_call", "unsupported_field")),
    ("functions_top_level", mutate(0, _set(["functions"], [{"name": "f"}])), ("functions", "unsupported_field")),
    ("tool_calls_on_user", mutate(0, _set(["messages", 0, "tool_calls"], [call("c")])),
     ("messages[0].tool_calls", "unknown_key")),
    ("user_missing_content", mutate(0, _del(["messages", 0, "content"])), ("messages[0].content", "missing_field")),
    ("user_content_null", mutate(0, _set(["messages", 0, "content"], None)), ("messages[0].content", "invalid_type")),
    ("content_number", mutate(0, _set(["messages", 0, "content"], 42)), ("messages[0].content", "invalid_type")),
    ("content_empty_parts", mutate(0, _set(["messages", 0, "content"], [])), ("messages[0].content", "empty_array")),
    ("content_image_part", mutate(0, _set(["messages", 0, "content"], [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}])),
     ("messages[0].content[0].type", "unsupported_content_part")),
    ("content_part_missing_text", mutate(0, _set(["messages", 0, "content"], [{"type": "text"}])),
     ("messages[0].content[0].text", "missing_field")),
    ("content_part_text_not_str", mutate(0, _set(["messages", 0, "content"], [{"type": "text", "text": 1}])),
     ("messages[0].content[0].text", "invalid_type")),
    ("user_content_empty", mutate(0, _set(["messages", 0, "content"], "")), ("messages[0].content", "empty_content")),
    ("user_content_blank_parts", mutate(0, _set(["messages", 0, "content"], [{"type": "text", "text": " "}])),
     ("messages[0].content", "empty_content")),
    ("assistant_content_blank", mutate(0, _set(["messages", 1, "content"], " \n")),
     ("messages[1].content", "empty_content")),
    ("arguments_too_deep", mutate(8, _set(["messages", 1, "tool_calls", 0, "function", "arguments"],
                                          '{"a": ' + "[" * 80 + "]" * 80 + "}")),
     ("messages[1].tool_calls[0].function.arguments", "invalid_arguments")),
    ("arguments_recursion", mutate(8, _set(["messages", 1, "tool_calls", 0, "function", "arguments"], "[" * 100_000)),
     ("messages[1].tool_calls[0].function.arguments", "invalid_arguments")),
    ("arguments_lone_surrogate", mutate(8, _set(["messages", 1, "tool_calls", 0, "function", "arguments"],
                                                '{"a": "\\udc00"}')),
     ("messages[1].tool_calls[0].function.arguments", "invalid_arguments")),
    ("assistant_empty", mutate(0, _set(["messages", 1], {"role": "assistant"})),
     ("messages[1].content", "missing_content")),
    ("assistant_null_no_calls", mutate(0, _set(["messages", 1, "content"], None)),
     ("messages[1].content", "missing_content")),
    ("name_not_string", mutate(0, _set(["messages", 0, "name"], 5)), ("messages[0].name", "invalid_type")),
    ("tool_calls_not_list", mutate(4, _set(["messages", 1, "tool_calls"], call("c"))),
     ("messages[1].tool_calls", "invalid_type")),
    ("tool_calls_empty", mutate(8, _set(["messages", 1, "tool_calls"], [])),
     ("messages[1].tool_calls", "empty_array")),
    ("tool_call_missing_id", mutate(4, _del(["messages", 1, "tool_calls", 0, "id"])),
     ("messages[1].tool_calls[0].id", "missing_field")),
    ("tool_call_empty_id", mutate(8, _set(["messages", 1, "tool_calls", 0, "id"], "")),
     ("messages[1].tool_calls[0].id", "invalid_value")),
    ("tool_call_bad_type", mutate(4, _set(["messages", 1, "tool_calls", 0, "type"], "retrieval")),
     ("messages[1].tool_calls[0].type", "invalid_value")),
    ("tool_call_missing_function", mutate(8, _del(["messages", 1, "tool_calls", 0, "function"])),
     ("messages[1].tool_calls[0].function", "missing_field")),
    ("tool_call_unknown_key", mutate(8, _set(["messages", 1, "tool_calls", 0, "index"], 0)),
     ("messages[1].tool_calls[0].index", "unknown_key")),
    ("tool_call_bad_name", mutate(8, _set(["messages", 1, "tool_calls", 0, "function", "name"], "has space")),
     ("messages[1].tool_calls[0].function.name", "invalid_function_name")),
    ("tool_call_undeclared", mutate(4, _set(["messages", 1, "tool_calls", 0, "function", "name"], "open_door")),
     ("messages[1].tool_calls[0].function.name", "unknown_tool")),
    ("arguments_object", mutate(8, _set(["messages", 1, "tool_calls", 0, "function", "arguments"], {"a": 1})),
     ("messages[1].tool_calls[0].function.arguments", "invalid_type")),
    ("arguments_not_json", mutate(8, _set(["messages", 1, "tool_calls", 0, "function", "arguments"], "{a: 1}")),
     ("messages[1].tool_calls[0].function.arguments", "invalid_arguments")),
    ("arguments_array", mutate(8, _set(["messages", 1, "tool_calls", 0, "function", "arguments"], "[1]")),
     ("messages[1].tool_calls[0].function.arguments", "invalid_arguments")),
    ("arguments_nan", mutate(8, _set(["messages", 1, "tool_calls", 0, "function", "arguments"], '{"a": NaN}')),
     ("messages[1].tool_calls[0].function.arguments", "invalid_arguments")),
    ("arguments_missing", mutate(8, _del(["messages", 1, "tool_calls", 0, "function", "arguments"])),
     ("messages[1].tool_calls[0].function.arguments", "missing_field")),
    ("duplicate_call_id", mutate(5, _set(["messages", 1, "tool_calls", 1, "id"], "a")),
     ("messages[1].tool_calls[1].id", "duplicate_tool_call_id")),
    ("parallel_disabled", mutate(5, _set(["parallel_tool_calls"], False)),
     ("messages[1].tool_calls", "parallel_tool_calls_disabled")),
    ("parallel_not_bool", mutate(5, _set(["parallel_tool_calls"], "yes")), ("parallel_tool_calls", "invalid_type")),
    ("tool_msg_missing_id", mutate(4, _del(["messages", 2, "tool_call_id"])),
     ("messages[2].tool_call_id", "missing_field")),
    ("tool_msg_unknown_id", mutate(4, _set(["messages", 2, "tool_call_id"], "call_9")),
     ("messages[2].tool_call_id", "unknown_tool_call_id")),
    ("tool_msg_id_not_str", mutate(4, _set(["messages", 2, "tool_call_id"], 1)),
     ("messages[2].tool_call_id", "invalid_type")),
    ("tool_msg_missing_content", mutate(4, _del(["messages", 2, "content"])),
     ("messages[2].content", "missing_field")),
    ("tools_not_list", mutate(4, _set(["tools"], TOOLS[0])), ("tools", "invalid_type")),
    ("tool_bad_type", mutate(4, _set(["tools", 1, "type"], "code_interpreter")), ("tools[1].type", "invalid_value")),
    ("tool_missing_function", mutate(4, _del(["tools", 1, "function"])), ("tools[1].function", "missing_field")),
    ("tool_missing_name", mutate(4, _del(["tools", 1, "function", "name"])), ("tools[1].function.name",
                                                                              "missing_field")),
    ("tool_bad_name", mutate(4, _set(["tools", 1, "function", "name"], "x" * 65)),
     ("tools[1].function.name", "invalid_function_name")),
    ("tool_duplicate_name", mutate(4, _set(["tools", 1, "function", "name"], "set_light")),
     ("tools[1].function.name", "duplicate_tool_name")),
    ("tool_parameters_not_object", mutate(4, _set(["tools", 0, "function", "parameters"], "object")),
     ("tools[0].function.parameters", "invalid_type")),
    ("tool_strict_not_bool", mutate(4, _set(["tools", 0, "function", "strict"], "yes")),
     ("tools[0].function.strict", "invalid_type")),
]


@pytest.mark.parametrize("line,expected", [(c[1], c[2]) for c in BAD_LINES], ids=[c[0] for c in BAD_LINES])
def test_bad_line_is_reported_with_line_field_and_code(tmp_path, line, expected):
    lines = good_lines(12)
    lines[6] = line
    problems = problems_of(tmp_path, lines)
    assert problems, "expected a problem"
    assert {p.line for p in problems} == {7}, problems  # only the bad line, nothing else
    assert (problems[0].field, problems[0].code) == expected, problems
    assert str(problems[0]).startswith("line 7: " + (expected[0] + ": " if expected[0] else ""))
    assert len(str(problems[0])) < 400  # messages stay short even for hostile input


def test_problem_str_format(tmp_path):
    lines = good_lines(12)
    lines[6] = mutate(1, _set(["messages", 2, "role"], "bot"))
    (p,) = problems_of(tmp_path, lines)
    assert str(p) == "line 7: messages[2].role: unknown role 'bot' (expected one of system, developer, user, " \
                     "assistant, tool)"
    assert str(LineProblem(0, "", "too_few_examples", "x")) == "x"


def test_several_problems_in_one_line_are_all_reported(tmp_path):
    bad = {"messages": [{"role": "bot", "content": "x"}, {"role": "user", "content": 1, "weight": 1}]}
    lines = good_lines(12)
    lines[0] = bad
    got = triples(problems_of(tmp_path, lines))
    assert (1, "messages[0].role", "unknown_role") in got
    assert (1, "messages[1].weight", "weight_not_allowed") in got
    assert (1, "messages[1].content", "invalid_type") in got
    # the unreadable role might have been the assistant turn, so no_assistant_target is not piled on
    assert (1, "messages", "no_assistant_target") not in got
    ok_roles = {"messages": [{"role": "user", "content": "x", "weight": 1}]}
    assert (1, "messages", "no_assistant_target") in triples(validate_supervised_line(ok_roles, 1)[1])


def test_invalid_weight_does_not_also_claim_no_target(tmp_path):
    lines = good_lines(12)
    lines[2] = mutate(0, _set(["messages", 1, "weight"], 5))
    assert triples(problems_of(tmp_path, lines)) == [(3, "messages[1].weight", "invalid_weight")]


# ------------------------------------------------------------------------------------ bad files


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train.jsonl", "\n".join(json.dumps(x) for x in good_lines(12)))
    return buf.getvalue()


@pytest.mark.parametrize("content,expected", [
    (b"", (0, "empty_file")),
    (b"\n\n  \n", (0, "empty_file")),
    (bytes(range(256)) * 8, (1, "binary_file")),
    (zip_bytes(), (1, "binary_file")),
    (gzip.compress(b'{"messages": []}\n' * 20), (1, "binary_file")),
    ("\n".join(json.dumps(x) for x in good_lines(12)).encode("utf-16"), (1, "unsupported_encoding")),
    (("\n".join(json.dumps(x) for x in good_lines(3)) + "\n" + '{"a": "\x00"}\n').encode(), (4, "binary_file")),
], ids=["empty", "only_blank_lines", "binary", "zip", "gzip", "utf16", "nul_in_line_4"])
def test_bad_files(tmp_path, content, expected):
    problems = problems_of(tmp_path, content)
    assert len(problems) == 1 and (problems[0].line, problems[0].code) == expected, problems


def test_empty_file_message_says_empty(tmp_path):
    (p,) = problems_of(tmp_path, b"")
    assert "empty" in str(p).lower()


def test_too_few_examples(tmp_path):
    problems = problems_of(tmp_path, good_lines(5))
    assert triples(problems) == [(0, "", "too_few_examples")]
    assert "10" in problems[0].message and "5" in problems[0].message
    assert problems_of(tmp_path, good_lines(3), min_examples=3) == []


def test_invalid_utf8_line_is_reported(tmp_path):
    body = "\n".join(json.dumps(x) for x in good_lines(12)).encode().split(b"\n")
    body[4] = b'{"messages": "\xff\xfe bad"}'
    problems = problems_of(tmp_path, b"\n".join(body) + b"\n")
    assert triples(problems) == [(5, "", "invalid_utf8")]


def test_huge_line_is_capped_and_following_lines_still_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 1000)
    lines = good_lines(12)
    lines[2] = json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]})
    lines[9] = "{bad"
    problems = problems_of(tmp_path, lines)
    assert triples(problems) == [(3, "", "line_too_long"), (10, "", "invalid_json")]
    assert "1000" in problems[0].message


def test_huge_last_line_without_newline(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl, "MAX_LINE_BYTES", 100)
    body = "\n".join(['{"messages": 1}'] * 11) + "\n" + "x" * 500  # no final newline
    problems = problems_of(tmp_path, body.encode())
    assert (12, "", "line_too_long") in triples(problems)


def test_problem_count_is_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_PROBLEMS", 5)
    problems = problems_of(tmp_path, ["{bad"] * 20)
    assert len(problems) == 6
    assert [p.line for p in problems[:5]] == [1, 2, 3, 4, 5]
    assert problems[-1].code == "too_many_problems" and "15 more" in problems[-1].message


def test_unknown_method_raises_and_registry_plugs_in(tmp_path, monkeypatch):
    path = write(tmp_path, good_lines(12))
    with pytest.raises(InvalidRequestError) as ei:
        data.validate_file(path, "distillation")
    assert ei.value.param == "method"

    def pref(obj, line, images=None):
        return (obj, []) if "input" in obj else (None, [LineProblem(line, "input", "missing_field", "no input")])

    monkeypatch.setitem(data.LINE_VALIDATORS, "distillation", pref)
    report = data.validate_file(path, "distillation")
    assert report.method == "distillation" and len(report.problems) == 12 and report.problems[0].field == "input"


def test_missing_file_raises_oserror(tmp_path):
    with pytest.raises(OSError):
        data.validate_file(tmp_path / "nope.jsonl")


def test_format_problems():
    ps = [LineProblem(i, "messages", "x", "bad") for i in range(1, 8)]
    s = data.format_problems(ps, limit=2)
    assert s == "line 1: messages: bad; line 2: messages: bad; and 5 more problems"


# ------------------------------------------------------------------------- OpenAI's JSON schema


def _openapi_to_jsonschema(node):
    """OpenAPI 3.0 `nullable: true` -> JSON Schema's anyOf [..., null]; everything else kept."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@pytest.fixture(scope="module")
def chat_line_schema():
    spec = json.loads(SPEC.read_text())
    root = {"$ref": "#/components/schemas/FineTuneChatRequestInput",
            "components": _openapi_to_jsonschema(spec["components"])}
    return jsonschema.Draft7Validator(root)


@pytest.mark.parametrize("i", range(len(valid_examples())))
def test_valid_examples_match_openai_schema(chat_line_schema, tmp_path, i):
    ex = valid_examples()[i]
    errors = [e.message for e in chat_line_schema.iter_errors(ex)]
    assert errors == []
    example, problems = validate_supervised_line(ex, 1)
    assert problems == [] and example is not None


INVALID_FOR_BOTH = [
    mutate(1, _set(["messages", 2, "role"], "bot")),
    mutate(4, _del(["messages", 2, "tool_call_id"])),
    mutate(3, _set(["messages", 3, "weight"], 2)),
    mutate(8, _set(["messages", 1, "tool_calls", 0, "function", "arguments"], {"a": 1})),
    mutate(4, _set(["tools", 1, "type"], "retrieval")),
    mutate(5, _set(["parallel_tool_calls"], "yes")),
    mutate(0, _set(["messages", 0, "content"], 42)),
    mutate(4, _del(["messages", 1, "tool_calls", 0, "id"])),
    {"messages": []},
    mutate(4, _set(["tools"], {"type": "function"})),
    mutate(0, _set(["messages", 0, "content"], [])),
    mutate(4, _del(["tools", 0, "function", "name"])),
]


@pytest.mark.parametrize("i", range(len(INVALID_FOR_BOTH)))
def test_invalid_examples_rejected_by_both(chat_line_schema, i):
    ex = INVALID_FOR_BOTH[i]
    assert not chat_line_schema.is_valid(ex)
    example, problems = validate_supervised_line(ex, 1)
    assert example is None and problems
