"""Issue 22's bad input for agentic RFT (RELIABILITY.md, "Agentic RFT: bad tools"; `make reliability`):

    python -m tools.reliability.agentic_probe [--json PATH] [--no-write]

1. Job creation through a real `modelmill serve` (the official openai SDK): a tool with a bad JSON
   schema, an MCP server that exits, one that never answers initialize, one that lists a bad schema,
   an HTTP tool on a host off the allow-list. Each must be a 400 naming the field, in bounded time.
2. Rollouts (ml/rft/multiturn.py) with a scripted model that calls the tool on every turn (a model
   looping on tool calls), on modelmill-tiny's tokenizer: an HTTP tool that hangs, one that answers
   garbage (a 5 MB binary body, an HTTP 500), an MCP server that dies on its second call, a python
   tool that answers (the loop alone) and one that spins. Each must end at the turn limit with tool messages ("Error: ..."), in bounded
   time; when more than half the rollouts had a tool fail, the step fails with the job error
   `tool_error` (what the job would show).
After every case: the sandbox processes still alive (must be 0). Prints a table; writes it as the
"agentic" section of RELIABILITY.md unless --no-write. The fast versions are tests/ml/test_mcp_servers.py,
tests/ml/test_rft_agentic.py and tests/e2e/test_agentic_rft.py (make test).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from benchmarks_md import write_section  # noqa: E402

from modelmill.local_server import LocalServer, cli_command  # noqa: E402

RELIABILITY = REPO / "RELIABILITY.md"
P = "method.reinforcement.environment"
GRADER = {"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "{{item.answer}}",
          "operation": "eq"}
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}
EXITS = "import sys\nsys.stderr.write('cannot open accounts.db')\nraise SystemExit(2)\n"
HANGS = "import time\ntime.sleep(3600)\n"
BAD_LIST = ("import json, sys\n"
            "for line in sys.stdin:\n"
            "    m = json.loads(line)\n"
            "    r = {'protocolVersion': m['params']['protocolVersion'], 'capabilities': {'tools': {}},\n"
            "         'serverInfo': {'name': 'x', 'version': '1'}} if m.get('method') == 'initialize' else \\\n"
            "        {'tools': [{'name': 'q', 'inputSchema': {'type': 'object', 'properties': {'a': {'type': 'nmber'}}}}]}\n"
            "    if 'id' in m:\n"
            "        print(json.dumps({'jsonrpc': '2.0', 'id': m['id'], 'result': r}), flush=True)\n")
# An MCP server whose `lookup` tool works once, then the server exits mid-rollout.
DIES = ("import json, os, sys\n"
        "calls = 0\n"
        "for line in sys.stdin:\n"
        "    m = json.loads(line)\n"
        "    if m.get('method') == 'initialize':\n"
        "        r = {'protocolVersion': m['params']['protocolVersion'], 'capabilities': {'tools': {}},\n"
        "             'serverInfo': {'name': 'x', 'version': '1'}}\n"
        "    elif m.get('method') == 'tools/list':\n"
        "        r = {'tools': [{'name': 'lookup', 'inputSchema': {'type': 'object'}}]}\n"
        "    elif m.get('method') == 'tools/call':\n"
        "        calls += 1\n"
        "        if calls == 2:\n"
        "            os._exit(9)\n"
        "        r = {'content': [{'type': 'text', 'text': 'ok'}]}\n"
        "    else:\n"
        "        continue\n"
        "    print(json.dumps({'jsonrpc': '2.0', 'id': m['id'], 'result': r}), flush=True)\n")


def sandbox_processes() -> int:
    """Live processes of sandbox launches: the default uid pool as root, else harnesses by their path."""
    from modelmill.ml.graders.sandbox import SANDBOX_HARNESS, SandboxConfig
    from modelmill.ml.graders.sandbox.processes import live_processes

    config = SandboxConfig()
    pool = set(range(config.uid, config.uid + config.uid_pool_size))
    return sum(bool(p.uids & pool) if os.geteuid() == 0 else SANDBOX_HARNESS in p.cmdline for p in live_processes())


def creation_cases(client, train: str) -> list[dict]:
    import openai

    cases = [
        ("tool with a bad JSON schema", {"tools": [{"type": "python", "name": "f", "parameters": {
            "type": "object", "properties": {"a": {"type": "integr"}}}, "source": "def f(a):\n    return a\n"}]}),
        ("MCP server that exits at start", {"tools": [{"type": "mcp", "name": "db", "source": EXITS}]}),
        ("MCP server that never answers initialize", {"tools": [{"type": "mcp", "name": "db", "source": HANGS,
                                                                 "startup_timeout_seconds": 5}]}),
        ("MCP server listing a bad inputSchema", {"tools": [{"type": "mcp", "name": "db", "source": BAD_LIST}]}),
        ("HTTP tool on a host off the allow-list", {"tools": [{"type": "http", "name": "meta",
                                                               "url": "http://169.254.169.254/latest"}]}),
    ]
    rows = []
    for name, environment in cases:
        started = time.monotonic()
        try:
            client.fine_tuning.jobs.create(training_file=train, model="modelmill-tiny", method={
                "type": "reinforcement", "reinforcement": {"grader": GRADER, "environment": environment}})
            outcome = "accepted (should not be)"
        except openai.APIStatusError as e:
            body = e.body if isinstance(e.body, dict) else {}
            outcome = f"{e.status_code} `{body.get('param')}`: {str(body.get('message'))[:160]}"
        rows.append({"case": name, "where": "job creation (HTTP)", "outcome": outcome,
                     "seconds": round(time.monotonic() - started, 2), "processes_left": sandbox_processes()})
    return rows


class _BadTools(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/hang":
            time.sleep(30)
        status, body = (500, b"\xff\xfe<html>oops") if self.path == "/500" else (200, os.urandom(5 * 1024 * 1024))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def rollout_cases(home: Path) -> list[dict]:
    from transformers import AutoTokenizer

    from modelmill.errors import ToolFailedError
    from modelmill.ml import chat_families, chat_format, environments, models
    from modelmill.ml.rft import agentic, multiturn

    tokenizer = AutoTokenizer.from_pretrained(models.ensure_base(home, "modelmill-tiny"))
    http = ThreadingHTTPServer(("127.0.0.1", 0), _BadTools)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    base, hosts = f"http://127.0.0.1:{http.server_port}", (f"127.0.0.1:{http.server_port}",)
    cases = [
        ("HTTP tool that hangs (30 s; timeout 1 s)", {"type": "http", "name": "lookup", "url": base + "/hang"}),
        ("HTTP tool answering 5 MB of binary garbage", {"type": "http", "name": "lookup", "url": base + "/garbage"}),
        ("HTTP tool answering 500 with garbage", {"type": "http", "name": "lookup", "url": base + "/500"}),
        ("MCP server that dies on its 2nd call", {"type": "mcp", "name": "db", "source": DIES}),
        ("python tool that answers (the model never stops calling it)",
         {"type": "python", "name": "lookup", "source": "def lookup(**kw):\n    return 'found nothing'\n"}),
        ("python tool that spins forever", {"type": "python", "name": "lookup",
                                            "source": "def lookup(**kw):\n    while True:\n        pass\n"}),
    ]
    rows = []
    try:
        for name, tool in cases:
            env = environments.validate_environment({"tools": [tool], "max_turns": 4, "tool_timeout_seconds": 1},
                                                    tool_hosts=hosts)
            tool_name = environments.template_tools(env)[0]["function"]["name"]
            call = '<tool_call>\n{"name": "%s", "arguments": {}}\n</tool_call><|im_end|>' % tool_name
            turn = tokenizer(call, add_special_tokens=False)["input_ids"]
            msgs = [{"role": "user", "content": "Look it up."}]
            text = chat_format.render(tokenizer, msgs, environments.template_tools(env), add_generation_prompt=True)
            trajs = [multiturn.start(tokenizer, text, msgs, {}) for _ in range(4)]
            for k, t in enumerate(trajs):
                t.group = k // 2
            setup = multiturn.RolloutSetup(tokenizer=tokenizer, family=chat_families.family_of(tokenizer), env=env,
                                           eos_ids=tuple(tokenizer.convert_tokens_to_ids(["<|im_end|>"])),
                                           tool_hosts=hosts)
            started = time.monotonic()
            multiturn.run_rollouts(trajs, lambda ids: ([list(turn) for _ in ids], None), setup)
            seconds = time.monotonic() - started
            stats = multiturn.rollout_stats(trajs)
            try:
                agentic.check_tool_failures(trajs, 0.5, "at step 1")
                job = "step goes on"
            except ToolFailedError as e:
                job = f"job fails, `{e.code}`: {str(e)[:120]}"
            first_error = next((m["content"][:100] for m in trajs[0].messages if m["role"] == "tool"), "")
            rows.append({"case": name, "where": "rollouts (looping model, 4 turns)",
                         "outcome": f"ended {sorted({t.ended for t in trajs})}, {stats['tool_calls_mean']:g} calls/rollout, "
                                    f"error rate {stats['tool_error_rate']:.2f}; first result {first_error!r}; {job}",
                         "seconds": round(seconds, 2), "processes_left": sandbox_processes()})
    finally:
        http.shutdown()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| case | where | outcome | seconds | sandbox processes left |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['where']} | {r['outcome'].replace('|', '/')} | {r['seconds']} | "
                     f"{r['processes_left']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RELIABILITY.md alone")
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="agentic-probe-"))
    env = dict(os.environ, MODELMILL_HOME=str(home))
    key = subprocess.run(cli_command("keys", "create", "--name", "probe"), env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    from openai import OpenAI

    started = time.monotonic()
    with LocalServer(home, worker=False, env={"MODELMILL_HOME": str(home)}) as server:
        client = OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)
        line = json.dumps({"messages": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "4"}) + "\n"
        train = client.files.create(file=("t.jsonl", (line * 4).encode()), purpose="fine-tune").id
        rows = creation_cases(client, train)
    rows += rollout_cases(home)
    text = table(rows)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if not args.no_write:
        body = (f"`python -m tools.reliability.agentic_probe` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
                f"{time.monotonic() - started:.0f} s in all). Every case must end in a 400 naming the field or in "
                "tool messages, within its time bound, with no sandbox process left.\n\n" + text)
        write_section("agentic", "Agentic RFT: bad tools", body, path=RELIABILITY)
    return 0 if all(r["processes_left"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
