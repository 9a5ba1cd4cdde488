"""Reinforcement (RFT) line validation: ml.data "reinforcement" lines -> PromptExample, problems with
line numbers and field paths, and agreement with OpenAI's FineTuneReinforcementRequestInput schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from modelmill.errors import DataValidationError
from modelmill.ml import data
from modelmill.ml.data.methods import validate_reinforcement_line
from modelmill.ml.types import PromptExample

SPEC = Path("/work/shared/spec/openai-training-data-schemas.json")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def prompt(content="What is 2 + 2?", **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], **extra}


def write(path: Path, objs) -> Path:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return path


def problems_of(tmp_path, obj) -> list[tuple[int, str, str]]:
    """(line, field, code) of each problem when `obj` is line 2 of an otherwise valid file."""
    path = write(tmp_path / "r.jsonl", [prompt(answer="4"), obj, prompt("Hi?")])
    return [(p.line, p.field, p.code) for p in data.validate_file(path, "reinforcement", min_examples=1).problems]


VALID = [
    prompt(answer="4"),
    prompt("Weather in Paris?", tools=TOOLS, reference_answer={"donors": 5, "acceptors": [1, 2]}, tags=["x"]),
    {"messages": [{"role": "developer", "content": "Answer with a number."},
                  {"role": "user", "content": "1 + 1?"},
                  {"role": "assistant", "content": "2"},
                  {"role": "user", "content": [{"type": "text", "text": "Times 3?"}]}], "answer": 6},
    {"messages": [{"role": "user", "content": "Weather?"},
                  {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                      "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                  {"role": "user", "content": "So, umbrella?"}], "tools": TOOLS, "answer": "no"},
]


def test_valid_lines_become_prompt_examples_with_items(tmp_path):
    path = write(tmp_path / "r.jsonl", VALID)
    examples = data.read_examples(path, "rft", min_examples=1)  # "rft" is an alias of "reinforcement"
    assert all(isinstance(e, PromptExample) for e in examples) and [e.line for e in examples] == [1, 2, 3, 4]
    first, second = examples[0], examples[1]
    assert first.item == {"answer": "4"} and first.tools is None and first.messages[-1]["role"] == "user"
    # messages and tools are reserved; every other field, nested or not, is grading data
    assert second.item == {"reference_answer": {"donors": 5, "acceptors": [1, 2]}, "tags": ["x"]}
    assert second.tools == TOOLS and "tools" not in second.item
    assert examples[2].item == {"answer": 6} and examples[3].messages[2]["role"] == "tool"


@pytest.mark.parametrize("obj, expected", [
    ({"answer": "4"}, (2, "messages", "missing_field")),
    ({"messages": "What is 2 + 2?"}, (2, "messages", "invalid_type")),
    ({"messages": []}, (2, "messages", "empty_array")),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
     (2, "messages[1].role", "invalid_last_role")),
    ({"messages": [{"role": "system", "content": "Be brief."}]}, (2, "messages[0].role", "invalid_last_role")),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 1},
                   {"role": "user", "content": "c"}]}, (2, "messages[1].weight", "weight_not_allowed")),
    ({"messages": [{"role": "bot", "content": "hi"}]}, (2, "messages[0].role", "unknown_role")),
    ({"messages": [{"role": "user", "content": 42}]}, (2, "messages[0].content", "invalid_type")),
    ({"messages": [{"role": "user", "content": "hi", "wieght": 1}]}, (2, "messages[0].wieght", "unknown_key")),
    (prompt(tools={"type": "function"}), (2, "tools", "invalid_type")),
    (prompt(tools=[{"type": "function", "function": {"name": "bad name!"}}]),
     (2, "tools[0].function.name", "invalid_function_name")),
    ({"messages": [{"role": "user", "content": "w?"},
                   {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                         "function": {"name": "nope", "arguments": "{}"}}]},
                   {"role": "tool", "tool_call_id": "c", "content": "x"}, {"role": "user", "content": "ok"}],
      "tools": TOOLS}, (2, "messages[1].tool_calls[0].function.name", "unknown_tool")),
])
def test_malformed_lines_name_line_and_field(tmp_path, obj, expected):
    assert expected in problems_of(tmp_path, obj)


def test_invalid_json_and_read_examples_raises_with_every_problem(tmp_path):
    path = write(tmp_path / "r.jsonl", [prompt(), "{not json", prompt(), {"messages": [{"role": "assistant",
                                                                                         "content": "x"}]}])
    with pytest.raises(DataValidationError) as ei:
        data.read_examples(path, "reinforcement", min_examples=1)
    assert [(p.line, p.field, p.code) for p in ei.value.problems] == [
        (2, "", "invalid_json"), (4, "messages[0].role", "invalid_last_role")]
    assert "line 4: messages[0].role: the last message must be a user message" in str(ei.value)


def test_too_few_examples_is_a_file_problem(tmp_path):
    report = data.validate_file(write(tmp_path / "r.jsonl", [prompt()] * 3), "reinforcement")
    assert [(p.line, p.code) for p in report.problems] == [(0, "too_few_examples")]


@pytest.fixture(scope="module")
def rft_line_schema():
    spec = json.loads(SPEC.read_text())
    return jsonschema.Draft202012Validator({"$ref": "#/components/schemas/FineTuneReinforcementRequestInput",
                                            "components": spec["components"]})


@pytest.mark.parametrize("i", range(len(VALID)))
def test_valid_lines_match_openai_schema(rft_line_schema, i):
    assert [e.message for e in rft_line_schema.iter_errors(VALID[i])] == []
    example, problems = validate_reinforcement_line(VALID[i], 1)
    assert problems == [] and example is not None


@pytest.mark.parametrize("obj", [{"answer": 1}, {"messages": []}, {"messages": [{"role": "bot", "content": "x"}]},
                                 prompt(tools=[{"type": "retrieval"}])])
def test_invalid_lines_rejected_by_both(rft_line_schema, obj):
    assert not rft_line_schema.is_valid(obj)
    example, problems = validate_reinforcement_line(obj, 1)
    assert example is None and problems
