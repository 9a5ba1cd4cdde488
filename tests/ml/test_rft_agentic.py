"""Agentic RFT: the environment spec (ml/environments.py), tools running in the sandbox and over HTTP,
the multi-turn rollout loop and its loss mask (ml/rft/multiturn.py), trajectory samples, the tool
safety rail, and one GRPO run on modelmill-tiny whose first turns call a python tool."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelmill.errors import DataValidationError, InvalidRequestError, ToolFailedError
from modelmill.ml import chat_families, environments, rft
from modelmill.ml.environments import ToolCall, run_tool_calls, validate_environment
from modelmill.ml.graders import GraderContext
from modelmill.ml.graders import sandbox as sandbox_mod
from modelmill.ml.graders.sandbox import SandboxConfig
from modelmill.ml.rft import agentic, multiturn
from modelmill.ml.rft.rewards import trajectory_sample
from tests.ml.reporters import ListReporter

BWRAP = SandboxConfig(wall_seconds=5.0, batch_wall_seconds=60.0, uid=2_100_000_000, uid_pool_size=16)
needs_bwrap = pytest.mark.skipif(not sandbox_mod.available(BWRAP),
                                 reason=f"bwrap sandbox unavailable: {sandbox_mod.unavailable_reason(BWRAP)}")
ADD = {"type": "python", "name": "add", "description": "Add two integers and count the calls.",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                      "required": ["a", "b"]},
       "source": ("def add(a, b):\n"
                  "    state['calls'] = state.get('calls', 0) + 1\n"
                  "    return a + b\n")}
HANG = {"type": "python", "name": "hang", "source": "def hang():\n    while True:\n        pass\n"}
BOOM = {"type": "python", "name": "boom", "source": "def boom():\n    raise RuntimeError('kaput')\n"}
P = "method.reinforcement.environment"


def env(*tools, **over) -> dict:
    return validate_environment({"tools": list(tools) or [ADD], **over}, P, tool_hosts=("127.0.0.1",))


# ---------------------------------------------------------------- the spec


def test_defaults_are_filled_in():
    out = env()
    assert {k: out[k] for k in environments.DEFAULTS} == environments.DEFAULTS
    assert out["initial_state"] == {} and out["tools"][0]["name"] == "add"
    assert validate_environment({"tools": [{"type": "python", "name": "f", "source": "def f():\n return 1\n"}]}
                                )["tools"][0]["parameters"] == {"type": "object", "properties": {}}


@pytest.mark.parametrize("spec, param, words", [
    ([], P, "must be an object"),
    ({"tools": []}, f"{P}.tools", "1 to 16 tools"),
    ({"tools": [ADD], "max_turn": 3}, f"{P}.max_turn", "Unrecognized request argument supplied"),
    ({"tools": [{**ADD, "sourc": "x"}]}, f"{P}.tools[0].sourc", "Unrecognized request argument supplied"),
    ({"tools": [{**ADD, "type": "shell"}]}, f"{P}.tools[0].type", "'python', 'http' or 'mcp'"),
    ({"tools": [{**ADD, "name": "two words"}]}, f"{P}.tools[0].name", "letters, digits"),
    ({"tools": [ADD, ADD]}, f"{P}.tools[1].name", "already defined"),
    ({"tools": [{**ADD, "parameters": {"type": "string"}}]}, f"{P}.tools[0].parameters", '"type": "object"'),
    ({"tools": [{**ADD, "parameters": {"type": "object", "properties": {"a": {"type": "integr"}}}}]},
     f"{P}.tools[0].parameters", "not a valid JSON schema"),
    ({"tools": [{**ADD, "source": "def add(a, b)\n    return 1\n"}]}, f"{P}.tools[0].source", "does not compile"),
    ({"tools": [{**ADD, "source": "def plus(a, b):\n    return a + b\n"}]}, f"{P}.tools[0].source",
     "must define a function add"),
    ({"tools": [{"type": "http", "name": "look", "url": "http://evil.example/x"}]}, f"{P}.tools[0].url",
     "not on the server's allow-list"),
    ({"tools": [{"type": "http", "name": "look", "url": "ftp://127.0.0.1/x"}]}, f"{P}.tools[0].url", "http://"),
    ({"tools": [ADD], "max_turns": 0}, f"{P}.max_turns", "between 1 and 16"),
    ({"tools": [ADD], "tool_timeout_seconds": "10"}, f"{P}.tool_timeout_seconds", "a number"),
    ({"tools": [ADD], "initial_state": [1]}, f"{P}.initial_state", "JSON object"),
])
def test_malformed_environments_name_the_exact_field(spec, param, words):
    with pytest.raises(InvalidRequestError) as ei:
        validate_environment(spec, P, tool_hosts=("127.0.0.1",))
    assert ei.value.param == param and words in ei.value.message


def test_http_host_allow_list_with_and_without_port():
    tool = {"type": "http", "name": "look", "url": "http://127.0.0.1:9/x"}
    assert validate_environment({"tools": [tool]}, tool_hosts=("127.0.0.1:9",))["tools"][0]["url"] == tool["url"]
    with pytest.raises(InvalidRequestError, match="is empty"):
        validate_environment({"tools": [tool]})


# ---------------------------------------------------------------- running tools


@needs_bwrap
def test_python_tools_run_in_the_sandbox_with_state_and_bounded_failures():
    e = env(ADD, HANG, BOOM, tool_timeout_seconds=1)
    states = [{"calls": 5}, {}]
    calls = [ToolCall(0, "c1", "add", '{"a": 2, "b": 3}'), ToolCall(0, "c2", "add", '{"a": 1, "b": 1}'),
             ToolCall(1, "c3", "hang", "{}"), ToolCall(1, "c4", "boom", "{}"), ToolCall(1, "c5", "nope", "{}"),
             ToolCall(1, "c6", "add", '{"a": "x"}'), ToolCall(1, "c7", "add", "not json"),
             ToolCall(1, "c8", "boom", '{"extra": 1}')]
    started = time.monotonic()
    results = run_tool_calls(e, calls, states, sandbox=BWRAP)
    assert time.monotonic() - started < 20  # the hanging tool is cut off at its 1 s limit
    assert [r.content for r in results[:2]] == ["5", "2"] and states[0] == {"calls": 7}  # round 2 saw round 1's state
    assert [r.error for r in results] == [None, None, "timeout", "error", "unknown_tool", "bad_arguments",
                                          "bad_arguments", "bad_arguments"]
    assert "unexpected keyword argument 'extra'" in results[7].content
    assert "kaput" in results[3].content and results[3].content.startswith("Error:")
    assert "at a" in results[5].content and all(r.seconds >= 0 for r in results)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["name"] == "slow":
            time.sleep(3)
        code = 500 if body["name"] == "broken" else 200
        self.send_response(code)
        self.end_headers()
        if body["name"] == "trickle":  # each byte within httpx's per-read timeout, the whole past the deadline
            try:
                for _ in range(10):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.25)
            except BrokenPipeError:  # the client gave up at its deadline, as it should
                pass
            return
        if body["name"] == "huge":
            try:
                self.wfile.write(b"y" * 1_000_000)
            except (BrokenPipeError, ConnectionResetError):  # the client stopped reading at its limit
                pass
            return
        self.wfile.write(json.dumps({"echo": body["arguments"]}).encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def http_tools():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/tool"
    yield [{"type": "http", "name": n, "url": url} for n in ("echo", "slow", "broken", "trickle", "huge")]
    server.shutdown()


def test_http_tools_answer_time_out_and_fail_as_tool_messages(http_tools):
    e = env(*http_tools, tool_timeout_seconds=1.0)
    calls = [ToolCall(0, "a", "echo", '{"q": 1}'), ToolCall(1, "b", "slow", "{}"), ToolCall(2, "c", "broken", "{}"),
             ToolCall(3, "d", "trickle", "{}"), ToolCall(4, "e", "huge", "{}")]
    started = time.monotonic()
    results = run_tool_calls(e, calls, [{}] * 5, tool_hosts=("127.0.0.1",))
    assert time.monotonic() - started < 2.9  # "slow" sleeps 3 s, "trickle" takes 2.5 s
    assert json.loads(results[0].content) == {"echo": {"q": 1}} and results[0].error is None
    assert [r.error for r in results[1:]] == ["timeout", "http_error", "timeout", None]
    assert "HTTP 500" in results[2].content and results[4].content == "y" * 2000 + "...[cut]"
    # the allow-list is checked again when the call runs
    assert run_tool_calls(e, calls[:1], [{}], tool_hosts=())[0].error == "host_not_allowed"


# ---------------------------------------------------------------- the rollout loop


def _scripted(tokenizer, turns: list[str]):
    """A generate() that answers every row's k-th turn with turns[k] (the last one repeats)."""
    end = "<|im_end|>"

    def generate(ids_list):
        out = []
        for ids in ids_list:
            k = tokenizer.decode(ids).count("<|im_start|>assistant") - 1
            out.append(tokenizer(turns[min(k, len(turns) - 1)] + end, add_special_tokens=False)["input_ids"])
        return out, None
    return generate


CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 20, "b": 22}}\n</tool_call>'


def _setup(tokenizer, e):
    eos = tuple(tokenizer.convert_tokens_to_ids(["<|im_end|>"]))
    return multiturn.RolloutSetup(tokenizer=tokenizer, family=chat_families.family_of(tokenizer), env=e, eos_ids=eos,
                                  sandbox=BWRAP)


def _start(tokenizer, e, n=1):
    from modelmill.ml import chat_format

    msgs = [{"role": "user", "content": "What is 20 + 22?"}]
    text = chat_format.render(tokenizer, msgs, environments.template_tools(e), add_generation_prompt=True)
    return [multiturn.start(tokenizer, text, msgs, environments.initial_state(e, {})) for _ in range(n)]


@needs_bwrap
def test_a_tool_call_then_an_answer_and_only_the_model_tokens_are_trained(tiny_tokenizer):
    e = env()
    [t] = multiturn.run_rollouts(_start(tiny_tokenizer, e), _scripted(tiny_tokenizer, [CALL, "Answer: 42"]),
                                 _setup(tiny_tokenizer, e))
    assert (t.turns, t.ended, t.final_text, t.tool_errors, t.state) == (2, "answer", "Answer: 42", 0, {"calls": 1})
    assert [m["role"] for m in t.messages] == ["user", "assistant", "tool", "assistant"]
    assert t.messages[2]["content"] == "42" and t.tool_calls[0]["function"]["name"] == "add"
    assert len(t.env_mask) == len(t.completion_ids)
    masked = tiny_tokenizer.decode([i for i, m in zip(t.completion_ids, t.env_mask) if m == 0])
    trained = tiny_tokenizer.decode([i for i, m in zip(t.completion_ids, t.env_mask) if m == 1])
    assert "<tool_response>\n42\n</tool_response>" in masked and masked.endswith("<|im_start|>assistant\n")
    assert "<tool_call>" in trained and "Answer: 42" in trained and "tool_response" not in trained
    sample = trajectory_sample(t.summary())
    assert sample["output_text"] == "42" and sample["output_tools"] == t.tool_calls
    assert sample["messages"][0]["role"] == "user" and sample["environment_state"] == {"calls": 1}
    stats = multiturn.rollout_stats([t])
    assert stats["rollout_turns_mean"] == 2 and stats["tool_calls_mean"] == 1 and stats["tool_error_rate"] == 0


@needs_bwrap
def test_a_model_looping_on_tool_calls_stops_at_the_turn_limit(tiny_tokenizer):
    e = env(max_turns=3)
    trajs = multiturn.run_rollouts(_start(tiny_tokenizer, e, 2), _scripted(tiny_tokenizer, [CALL]),
                                   _setup(tiny_tokenizer, e))
    for t in trajs:  # the third turn's call is not run: the model would never read its result
        assert (t.turns, t.ended, len(t.tool_calls), len(t.tool_seconds), t.state) == (3, "turn_limit", 3, 2,
                                                                                      {"calls": 2})


@needs_bwrap
def test_the_token_budget_ends_a_rollout(tiny_tokenizer):
    e = env(max_rollout_tokens=40)
    [t] = multiturn.run_rollouts(_start(tiny_tokenizer, e), _scripted(tiny_tokenizer, [CALL]),
                                 _setup(tiny_tokenizer, e))
    assert t.ended == "token_budget" and len(t.completion_ids) <= 40 and t.turns <= 2


def test_tool_failures_on_more_than_half_the_rollouts_fail_the_step():
    ok, bad = multiturn.Trajectory([], [], {}), multiturn.Trajectory([], [{"role": "tool", "content": "Error: x"}], {})
    bad.tool_errors = bad.tool_failures = 1
    mistaken = multiturn.Trajectory([], [], {})
    mistaken.tool_errors = 1  # the model named no tool or wrote bad arguments: its to learn from
    agentic.check_tool_failures([ok, bad, mistaken, mistaken], 0.5, "at step 1")
    agentic.check_tool_failures([ok, bad], 0.5, "at step 1")  # half: fine
    with pytest.raises(ToolFailedError, match="2 of 3 rollouts at step 1.*Error: x") as ei:
        agentic.check_tool_failures([ok, bad, bad], 0.5, "at step 1")
    assert ei.value.code == "tool_error"


# ---------------------------------------------------------------- one GRPO run


@needs_bwrap
def test_agentic_grpo_run_calls_tools_and_reports_rollout_metrics(tiny_model_dir, tmp_path, monkeypatch):
    """First turns are forced to call `add` (modelmill-tiny is random); later turns are the policy's own.
    The grader reads the environment's final state, so the reward is 1 exactly when the tool ran."""
    from trl import GRPOTrainer

    tokenizer_calls = []
    original = GRPOTrainer._generate_single_turn

    def first_turn_calls(self, prompt_ids, images, fields, n, **kw):
        ids, logps = original(self, prompt_ids, images, fields, n, **kw)
        tok = self.processing_class
        for r, p in enumerate(prompt_ids):
            if "<tool_response>" not in tok.decode(p):
                ids[r] = tok(CALL + "<|im_end|>", add_special_tokens=False)["input_ids"]
                tokenizer_calls.append(r)
        return ids, logps

    masks = []
    original_score = GRPOTrainer._generate_and_score_completions

    def keep_masks(self, inputs):
        out = original_score(self, inputs)
        masks.append((out["completion_mask"].clone(), out["tool_mask"].clone()))
        return out

    monkeypatch.setattr(GRPOTrainer, "_generate_single_turn", first_turn_calls)
    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", keep_masks)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Add {i} and {i}."}]}) + "\n"
                             for i in range(2)))
    grader = {"type": "python", "name": "used_tool",
              "source": "def grade(sample, item):\n    return float(sample['environment_state'].get('calls', 0) > 0)\n"}
    config = rft.RFTConfig(base_dir=tiny_model_dir, train_path=train, valid_path=train, output_dir=tmp_path / "out",
                           n_epochs=1, batch_size=2, learning_rate_multiplier=10.0, grader=grader,
                           grader_context=GraderContext(sandbox=BWRAP), compute_multiplier=0.5, eval_interval=1,
                           eval_samples=1, max_completion_tokens=8, max_seq_len=512, torch_threads=1,
                           keep_checkpoints=1, base_check_prompts=0,
                           environment=env(max_turns=2, max_rollout_tokens=96))
    rep = ListReporter()
    result = rft.train_rft(config, rep)
    assert result.status == "succeeded" and result.steps == 1 and tokenizer_calls
    [(_, _, m)] = rep.steps
    assert m["rollout_turns_mean"] == 2 and m["tool_calls_mean"] >= 1 and m["tool_error_rate"] == 0
    assert m["tool_latency_mean"] > 0 and m["train_reward_mean"] == 1.0
    # TRL's loss mask (completion_mask * tool_mask) leaves out the tool results' tokens
    [(completion_mask, tool_mask)] = masks
    assert tool_mask.shape == completion_mask.shape and ((tool_mask == 0) & (completion_mask == 1)).sum() > 0
    [(_, msg, data)] = [e for e in rep.events if e[2] and "trajectory" in e[2]]
    assert msg.startswith("Sampled trajectory at step 1") and data["trajectory"][0]["role"] == "user"


def test_rft_config_rollout_budget(tmp_path):
    config = rft.RFTConfig(base_dir=tmp_path, train_path=tmp_path, valid_path=None, output_dir=tmp_path, n_epochs=1,
                           batch_size=1, learning_rate_multiplier=1.0, grader={"type": "string_check"},
                           max_completion_tokens=16)
    assert config.rollout_budget == 16
    assert replace(config, environment=env(max_rollout_tokens=300)).rollout_budget == 300


def test_a_line_with_a_bad_environment_state_is_refused_before_training(tiny_tokenizer, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}], "environment_state": {"n": 1}})
                     + "\n" + json.dumps({"messages": [{"role": "user", "content": "Hi"}], "environment_state": 3})
                     + "\n")
    config = rft.RFTConfig(base_dir=tmp_path, train_path=train, valid_path=None, output_dir=tmp_path, n_epochs=1,
                           batch_size=1, learning_rate_multiplier=1.0, grader={"type": "string_check"},
                           environment=env())
    with pytest.raises(DataValidationError, match="line 2: environment_state must be a JSON object"):
        rft.example_lengths(train, tiny_tokenizer, config)


def test_the_relative_judge_scores_each_prompts_rollouts_together():
    from modelmill.ml.graders import GraderContext as Context
    from modelmill.ml.rft.rewards import GraderReward
    from tests.ml.graders.test_relative_judge import SPEC, FakeJudge

    judge = FakeJudge('{"scores": [1, 9]}', '{"scores": [4, 6]}')
    reward = GraderReward(SPEC, Context(judge=judge), max_error_share=0.5, require_marker=False)
    lines = [json.dumps({"messages": [{"role": "user", "content": q}], "task": q}) for q in ("a", "a", "b", "b")]
    trajectory = [{"final_text": f"Answer: {k}", "tool_calls": [], "environment_state": {}, "model_tokens": 3,
                   "messages": [{"role": "assistant", "content": f"try {k}"}]} for k in range(4)]
    rewards = reward(prompts=["p"] * 4, completions=[""] * 4, completion_ids=[[1]] * 4, item_json=lines,
                     has_tools=[True] * 4, question=["q"] * 4, trajectory=trajectory)
    assert rewards == [1.0, 9.0, 4.0, 6.0] and len(judge.seen) == 2  # one judge call per prompt's group
    assert '"try 0"' in judge.seen[0][-1]["content"] and '"try 1"' in judge.seen[0][-1]["content"]
