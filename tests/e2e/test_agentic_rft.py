"""Agentic RFT through the official openai SDK against the live test server (modelmill-tiny): a job with
a python tool (ModelMill's method.reinforcement.environment extension) succeeds and reports the rollout
metrics; malformed environments are 400s naming the exact field."""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.conftest import wait_for
from tests.e2e.test_rft import events_of
from tests.spec_check import assert_matches

HP = {"n_epochs": 1, "batch_size": 10, "learning_rate_multiplier": 1.0, "reasoning_effort": "low",
      "compute_multiplier": 0.25, "eval_interval": 2, "eval_samples": 1}
MULTIPLY = {"type": "python", "name": "multiply", "description": "Multiply two integers.",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                           "required": ["a", "b"]},
            "source": "def multiply(a, b):\n    state['used'] = True\n    return a * b\n"}
# Reads the trajectory: the final answer, and the environment's state the tool left behind.
GRADER = {"type": "python", "name": "product", "source":
          "def grade(sample, item):\n"
          "    assert sample['messages'][0]['role'] == 'user' and isinstance(sample['environment_state'], dict)\n"
          "    return 0.5 * (item['answer'] in sample['output_text']) + 0.5 * bool(sample['environment_state'])\n"}
ENV = {"tools": [MULTIPLY], "max_turns": 2, "max_rollout_tokens": 160, "tool_timeout_seconds": 5}


def _lines(n: int, seed: int) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"What is {12 + i + seed} times {34 + i}?"}],
             "answer": str((12 + i + seed) * (34 + i))} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def agentic_files(client):
    train = client.files.create(file=("agentic_train.jsonl", _lines(10, 0)), purpose="fine-tune")
    valid = client.files.create(file=("agentic_valid.jsonl", _lines(1, 50)), purpose="fine-tune")
    return train.id, valid.id


def _create(client, train: str, environment: dict, **kw):
    return client.fine_tuning.jobs.create(
        training_file=train, model="modelmill-tiny", seed=3,
        method={"type": "reinforcement",
                "reinforcement": {"grader": GRADER, "hyperparameters": HP, "environment": environment}}, **kw)


def test_agentic_rft_job_with_a_python_tool(client, agentic_files):
    train, valid = agentic_files
    created = _create(client, train, ENV, validation_file=valid)
    job = wait_for(client, created.id, {"succeeded", "failed", "cancelled"}, timeout=240)
    assert job.status == "succeeded", job.error
    body = client.fine_tuning.jobs.with_raw_response.retrieve(job.id).http_response.json()
    assert_matches(body, "FineTuningJob")
    echoed = body["method"]["reinforcement"]["environment"]
    assert echoed["tools"][0]["name"] == "multiply" and echoed["max_turns"] == 2
    assert echoed["max_tool_output_chars"] == 2000  # defaults are filled in and shown
    assert body.get("eval_id") is None  # no one-turn before/after eval: it could not run the tools
    events = events_of(client, job.id)
    metrics = [e.data for e in events if e.type == "metrics"]
    assert metrics, [e.message for e in events]
    for m in metrics:
        assert 1 <= m["rollout_turns_mean"] <= 2 and m["tool_calls_mean"] >= 0
        assert 0 <= m["tool_error_rate"] <= 1 and m["tool_latency_mean"] >= 0 and m["train_grader_error_rate"] == 0
    sampled = [e for e in events if "trajectory" in (e.data or {})]
    assert sampled and sampled[0].data["trajectory"][0]["role"] == "user"


@pytest.mark.parametrize("environment, param", [
    ({"tools": [{**MULTIPLY, "parameters": {"type": "object", "properties": {"a": {"type": "int"}}}}]},
     "method.reinforcement.environment.tools[0].parameters"),
    ({"tools": [{**MULTIPLY, "source": "def times(a, b):\n    return a * b\n"}]},
     "method.reinforcement.environment.tools[0].source"),
    ({"tools": [{"type": "http", "name": "lookup", "url": "http://169.254.169.254/latest"}]},
     "method.reinforcement.environment.tools[0].url"),
    ({"tools": [MULTIPLY], "max_turns": 99}, "method.reinforcement.environment.max_turns"),
    ({"tools": [MULTIPLY], "turns": 2}, "method.reinforcement.environment.turns"),
    # MCP servers are started once at creation to list their tools: one that exits or never answers
    # initialize is a 400 (within its startup_timeout_seconds), not a failed job
    ({"tools": [{"type": "mcp", "name": "db", "source": "raise SystemExit('no database')\n"}]},
     "method.reinforcement.environment.tools[0]"),
    ({"tools": [{"type": "mcp", "name": "db", "source": "import time\ntime.sleep(600)\n",
                 "startup_timeout_seconds": 1}]}, "method.reinforcement.environment.tools[0]"),
])
def test_malformed_environment_is_a_400_naming_the_field(client, agentic_files, environment, param):
    with pytest.raises(openai.BadRequestError) as e:
        _create(client, agentic_files[0], environment)
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body
