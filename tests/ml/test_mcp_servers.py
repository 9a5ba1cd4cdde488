"""MCP servers as agentic RFT tools (ml/mcp_servers.py): listed at job creation (a clear 400 when one
will not start, hangs or lists a bad schema), a fresh server process per rollout group in the bwrap
sandbox, calls as tools/call, and nothing left running after a server times out, dies or is stopped."""

from __future__ import annotations

import os
import time

import pytest

from modelmill.errors import InvalidRequestError
from modelmill.ml import environments, mcp_tools
from modelmill.ml.environments import ToolCall, run_tool_calls, validate_environment
from modelmill.ml.graders import sandbox as sandbox_mod
from modelmill.ml.graders.sandbox import SandboxConfig
from modelmill.ml.graders.sandbox.processes import live_processes
from tests.ml.sandbox_checks import left_after

UID, POOL = 2_100_100_000, 16
BWRAP = SandboxConfig(wall_seconds=5.0, batch_wall_seconds=60.0, uid=UID, uid_pool_size=POOL)
pytestmark = pytest.mark.skipif(not sandbox_mod.available(BWRAP),
                                reason=f"bwrap sandbox unavailable: {sandbox_mod.unavailable_reason(BWRAP)}")
P = "method.reinforcement.environment"

# A small MCP stdio server on the standard library alone (newline-delimited JSON-RPC), so it starts
# in milliseconds; SERVER_TOOLS and the handlers are spliced in per test.
SERVER = '''
import json, os, sys, time
COUNT = {"n": 0}
TOOLS = %(tools)s

def send(obj):
    sys.stdout.write(json.dumps(obj) + "\\n")
    sys.stdout.flush()

def call(name, args):
%(body)s

for line in sys.stdin:
    msg = json.loads(line)
    method, mid = msg.get("method"), msg.get("id")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": mid, "result": {"protocolVersion": msg["params"]["protocolVersion"],
              "capabilities": {"tools": {}}, "serverInfo": {"name": "test", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": mid, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        text = call(msg["params"]["name"], msg["params"].get("arguments") or {})
        send({"jsonrpc": "2.0", "id": mid, "result": {"content": [{"type": "text", "text": str(text)}]}})
    elif mid is not None:
        send({"jsonrpc": "2.0", "id": mid, "error": {"code": -32601, "message": "unknown method"}})
'''
COUNTER_TOOLS = [
    {"name": "count", "description": "Count this server's calls.", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "add", "description": "Add two integers.",
     "inputSchema": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                     "required": ["a", "b"]}},
    {"name": "die", "description": "Exit.", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "stall", "description": "Never answer.", "inputSchema": {"type": "object", "properties": {}}},
]
COUNTER_BODY = '''
    if name == "add":
        return args["a"] + args["b"]
    if name == "die":
        os._exit(3)
    if name == "stall":
        time.sleep(1000)
    COUNT["n"] += 1
    return COUNT["n"]
'''


def server(tools=COUNTER_TOOLS, body=COUNTER_BODY) -> str:
    return SERVER % {"tools": repr(tools), "body": body}


def mcp(source=None, **over) -> dict:
    return {"type": "mcp", "name": "counter", "source": source or server(), **over}


def live_sandbox_processes() -> list[int]:
    """Live processes of this file's sandboxes: its uid pool as root, else the harness in --serve mode."""
    return [p.pid for p in live_processes() if (
        any(UID <= u < UID + POOL for u in p.uids) if os.geteuid() == 0
        else "--serve" in p.cmdline and p.ppid == os.getpid())]


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    assert left_after(live_sandbox_processes, seconds=5) == []


def validate(*tools, **over) -> dict:
    return validate_environment({"tools": list(tools), **over}, P, sandbox=BWRAP)


def test_the_tools_come_from_the_server_and_are_listed_for_the_model():
    e = validate(mcp(allowed_tools=["count", "add"]))
    [entry] = e["tools"]
    assert [t["name"] for t in entry["tools"]] == ["count", "add"]
    listed = environments.template_tools(e)
    assert [t["function"]["name"] for t in listed] == ["count", "add"]
    assert listed[1]["function"]["parameters"]["required"] == ["a", "b"]


@pytest.mark.parametrize("tool, param, words", [
    ({"type": "mcp", "name": "x"}, f"{P}.tools[0]", "exactly one of `source`"),
    (mcp(command=["python3"]), f"{P}.tools[0]", "exactly one of `source`"),
    ({"type": "mcp", "name": "x", "command": ["bin/server"]}, f"{P}.tools[0].command[0]", "absolute path"),
    (mcp(source="def f(:\n"), f"{P}.tools[0].source", "does not compile"),
    (mcp(startup_timeout_seconds=0), f"{P}.tools[0].startup_timeout_seconds", "between 1 and 60"),
    (mcp(url="http://x"), f"{P}.tools[0].url", "Unrecognized request argument"),
])
def test_malformed_mcp_specs_are_refused_without_starting_anything(tool, param, words):
    with pytest.raises(InvalidRequestError) as ei:
        validate(tool)
    assert ei.value.param == param and words in ei.value.message


@pytest.mark.parametrize("source, words", [
    ("raise SystemExit('no config')\n", "exited"),
    ("import sys\nsys.stderr.write('cannot open the database')\nraise SystemExit(2)\n", "cannot open the database"),
    ("import time\ntime.sleep(1000)\n", "did not answer initialize and tools/list within 1s"),
    ("import sys\nfor line in sys.stdin:\n    print('not json', flush=True)\n", "did not"),
], ids=["exits", "exits-with-stderr", "hangs-on-initialize", "garbage"])
def test_a_server_that_will_not_start_is_a_400_in_bounded_time(source, words):
    started = time.monotonic()
    with pytest.raises(InvalidRequestError) as ei:
        validate(mcp(source=source, startup_timeout_seconds=1))
    assert ei.value.param == f"{P}.tools[0]" and "did not start" in ei.value.message
    assert words in ei.value.message, ei.value.message
    assert time.monotonic() - started < 8


def test_a_listed_tool_with_a_bad_schema_is_a_400():
    bad = [{"name": "q", "inputSchema": {"type": "object", "properties": {"a": {"type": "integr"}}}}]
    with pytest.raises(InvalidRequestError) as ei:
        validate(mcp(source=server(bad, "    return 1\n")))
    assert ei.value.param == f"{P}.tools[0]" and "not a valid JSON schema" in ei.value.message
    assert "inputSchema of its tool 'q'" in ei.value.message


def test_mcp_tool_names_may_not_clash_with_other_tools():
    clash = {"type": "python", "name": "count", "source": "def count():\n    return 0\n"}
    with pytest.raises(InvalidRequestError) as ei:
        validate(clash, mcp())
    assert ei.value.param == f"{P}.tools[1]" and "'count'" in ei.value.message


def _calls(rollouts_and_names):
    return [ToolCall(r, f"c{k}", name, args) for k, (r, name, args) in enumerate(rollouts_and_names)]


def test_each_rollout_group_has_its_own_server_and_calls_run_there():
    e = validate(mcp(), tool_timeout_seconds=2)
    groups = mcp_tools.start_groups(e, [0, 0, 1], BWRAP, rollouts_per_group=2)
    try:
        assert groups[0] is groups[1] and groups[0] is not groups[2]
        states = [{}, {}, {}]
        first = run_tool_calls(e, _calls([(0, "count", "{}"), (1, "count", "{}"), (2, "count", "{}"),
                                          (2, "add", '{"a": 2, "b": 40}')]), states, servers=groups)
        # rollouts 0 and 1 share group 0's server (2 calls); group 1's server counts from 1 again
        assert [r.content for r in first] == ["1", "2", "1", "42"] and all(r.error is None for r in first)
        bad = run_tool_calls(e, _calls([(0, "add", '{"a": "x"}'), (0, "nope", "{}")]), states, servers=groups)
        assert [r.error for r in bad] == ["bad_arguments", "unknown_tool"]
    finally:
        mcp_tools.close_groups(groups)
    assert all(s.proc.poll() is not None for g in groups for s in g.servers.values())


def test_a_server_that_dies_or_stalls_mid_rollout_becomes_tool_errors_and_is_gone():
    e = validate(mcp(), tool_timeout_seconds=1)
    groups = mcp_tools.start_groups(e, [0, 1], BWRAP)
    try:
        started = time.monotonic()
        out = run_tool_calls(e, _calls([(0, "die", "{}"), (1, "stall", "{}")]), [{}, {}], servers=groups)
        assert time.monotonic() - started < 5
        assert out[0].error == "crash" and "exited (status 3)" in out[0].content
        assert out[1].error == "timeout" and out[1].content.startswith("Error: the tool did not answer within 1s")
        for group in groups:  # both servers are stopped now; later calls say so at once
            assert group.servers["counter"].proc.poll() is not None
        again = run_tool_calls(e, _calls([(0, "count", "{}"), (1, "count", "{}")]), [{}, {}], servers=groups)
        assert [r.error for r in again] == ["crash", "crash"] and "is not running" in again[1].content
    finally:
        mcp_tools.close_groups(groups)


def test_a_server_that_does_not_start_during_rollouts_is_a_tool_error():
    e = validate(mcp(), tool_timeout_seconds=1)
    e["tools"][0] = {**e["tools"][0], "source": "raise SystemExit(1)\n"}  # it ran at creation, not now
    groups = mcp_tools.start_groups(e, [0], BWRAP)
    try:
        [r] = run_tool_calls(e, _calls([(0, "count", "{}")]), [{}], servers=groups)
        assert r.error == "crash" and "did not start" in r.content
    finally:
        mcp_tools.close_groups(groups)


def test_a_server_written_with_the_mcp_sdk_runs_in_the_sandbox():
    source = ("from mcp.server.mcpserver import MCPServer\n"
              "app = MCPServer('calc')\n"
              "@app.tool()\n"
              "def multiply(a: int, b: int) -> int:\n"
              "    '''Multiply two integers.'''\n"
              "    return a * b\n"
              "app.run()\n")
    e = validate(mcp(source=source, startup_timeout_seconds=30), tool_timeout_seconds=10)
    assert [t["name"] for t in e["tools"][0]["tools"]] == ["multiply"]
    groups = mcp_tools.start_groups(e, [0], BWRAP)
    try:
        [r] = run_tool_calls(e, _calls([(0, "multiply", '{"a": 123, "b": 45}')]), [{}], servers=groups)
        assert (r.content, r.error) == ("5535", None)
    finally:
        mcp_tools.close_groups(groups)


def test_rollouts_call_the_mcp_tools_of_their_group_and_stop_the_servers(tiny_tokenizer):
    from modelmill.ml import chat_families, chat_format
    from modelmill.ml.rft import multiturn

    e = validate(mcp(allowed_tools=["count"]), max_turns=3)
    msgs = [{"role": "user", "content": "Count twice."}]
    text = chat_format.render(tiny_tokenizer, msgs, environments.template_tools(e), add_generation_prompt=True)
    trajs = [multiturn.start(tiny_tokenizer, text, msgs, {}) for _ in range(3)]
    for t, group in zip(trajs, [0, 0, 5]):
        t.group = group
    call = '<tool_call>\n{"name": "count", "arguments": {}}\n</tool_call>'

    def generate(ids_list):  # every rollout calls `count` on its first two turns, then answers
        turns = [tiny_tokenizer.decode(ids).count("<|im_start|>assistant") - 1 for ids in ids_list]
        return [tiny_tokenizer(f"{call if k < 2 else 'Answer: done'}<|im_end|>", add_special_tokens=False)["input_ids"]
                for k in turns], None

    setup = multiturn.RolloutSetup(tokenizer=tiny_tokenizer, family=chat_families.family_of(tiny_tokenizer), env=e,
                                   eos_ids=tuple(tiny_tokenizer.convert_tokens_to_ids(["<|im_end|>"])), sandbox=BWRAP)
    multiturn.run_rollouts(trajs, generate, setup)
    counts = [[m["content"] for m in t.messages if m["role"] == "tool"] for t in trajs]
    # group 0's two rollouts share one server (4 calls, in turn order); group 5 has its own
    assert sorted(counts[0] + counts[1]) == ["1", "2", "3", "4"] and counts[2] == ["1", "2"]
    assert all(t.ended == "answer" and t.tool_errors == 0 for t in trajs)


def test_a_prompts_consecutive_rollouts_form_one_group(tiny_tokenizer):
    from modelmill.ml.rft import agentic

    e = validate_environment({"tools": [mcp()]}, P, probe_mcp=False)
    rows = [{"prompt": p, "item_json": '{"messages": [{"role": "user", "content": "%s"}]}' % p} for p in "aabbba"]
    assert [t.group for t in agentic.trajectories_for(rows, tiny_tokenizer, e)] == [0, 0, 2, 2, 2, 5]
