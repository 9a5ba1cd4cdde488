"""The grader sandbox's escape attempts (test_sandbox_escapes.py), run as agentic RFT tools: each one
as a python tool's body (environments.run_tool_calls, one sandbox launch) and as the tool of an MCP
server (ml/mcp_servers.py, a long-lived sandboxed server process). None may reach the network, the
service's store (its SQLite database and files), its keys (environment, home) or its sources, and
nothing of either kind of tool may outlive it."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from modelmill.ml import environments, mcp_tools
from modelmill.ml.environments import ToolCall, run_tool_calls, validate_environment
from modelmill.ml.graders import sandbox
from modelmill.ml.graders.sandbox import SandboxConfig
from modelmill.ml.graders.sandbox.processes import live_processes
from tests.ml.sandbox_checks import left_after, plant_secret, secret_scan_body

UID, POOL = 2_100_200_000, 16
CONFIG = SandboxConfig(wall_seconds=5.0, batch_wall_seconds=30.0, memory_bytes=512 * 1024**2,
                       tmp_bytes=8 * 1024**2, max_processes=32, uid=UID, uid_pool_size=POOL)
pytestmark = pytest.mark.skipif(not sandbox.available(CONFIG),
                                reason=f"bwrap sandbox unavailable: {sandbox.unavailable_reason(CONFIG)}")

# The MCP server: a stdlib JSON-RPC loop whose one tool runs the attempt (escape(**arguments)); an
# exception is an isError result, as an SDK server would send it.
MCP_SERVER = '''
import json, sys, traceback
%(tool)s
TOOLS = [{"name": "escape", "inputSchema": {"type": "object"}}]
for line in sys.stdin:
    msg = json.loads(line)
    method, mid = msg.get("method"), msg.get("id")
    if method == "initialize":
        result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "escape", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call":
        try:
            result = {"content": [{"type": "text", "text": json.dumps(escape(**msg["params"]["arguments"]))}]}
        except BaseException as exc:
            result = {"content": [{"type": "text", "text": type(exc).__name__ + ": " + str(exc)}], "isError": True}
    else:
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": mid, "result": result}) + "\\n")
    sys.stdout.flush()
'''


def tool_source(body: str) -> str:
    return "def escape(**item):\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())


def run_as(kind: str, body: str, item: dict | None = None) -> environments.ToolResult:
    """Run the attempt once as a tool of this kind; the ToolResult the model would read."""
    if kind == "python":
        env = validate_environment({"tools": [{"type": "python", "name": "escape", "source": tool_source(body)}],
                                    "tool_timeout_seconds": 5})
        return run_tool_calls(env, [ToolCall(0, "c0", "escape", json.dumps(item or {}))], [{}], sandbox=CONFIG)[0]
    spec = {"type": "mcp", "name": "escapes", "source": MCP_SERVER % {"tool": tool_source(body)}}
    env = validate_environment({"tools": [spec], "tool_timeout_seconds": 5}, sandbox=CONFIG)
    groups = mcp_tools.start_groups(env, [0], CONFIG)
    try:
        return run_tool_calls(env, [ToolCall(0, "c0", "escape", json.dumps(item or {}))], [{}], servers=groups)[0]
    finally:
        mcp_tools.close_groups(groups)


def assert_refused(result: environments.ToolResult, *fragments: str) -> None:
    assert result.error is not None and result.content.startswith("Error:"), result
    assert any(f in result.content for f in fragments), result


def assert_value(result: environments.ToolResult, value) -> None:
    """The tool answered `value` (a python tool passes a str on as it is; the MCP server sends JSON)."""
    assert result.error is None, result
    assert (result.content if result.content == value else json.loads(result.content)) == value, result


def leftovers() -> list[str]:
    """Live processes of this file's sandboxes: a uid of its pool as root, else the harness by its path."""
    me = os.getpid()
    return [f"{p.pid}: {p.cmdline[:120]}" for p in live_processes() if p.pid != me and (
        p.uids & set(range(UID, UID + POOL)) if os.geteuid() == 0
        else sandbox.SANDBOX_HARNESS in p.cmdline and p.ppid in (me, 1))]


@pytest.fixture(autouse=True)
def nothing_left_behind():
    yield
    left = left_after(leftovers, seconds=3)
    assert not left, f"processes left behind: {left}"


KINDS = pytest.mark.parametrize("kind", ["python", "mcp"])


@KINDS
def test_no_network(kind):
    listener = socket.create_server(("127.0.0.1", 0))  # a real service on the host's loopback
    try:
        port = listener.getsockname()[1]
        for target in (["1.1.1.1", 80], ["127.0.0.1", port]):
            assert_refused(run_as(kind, "import socket\nsocket.create_connection(tuple(item['to']), timeout=1)\n"
                                        "return 'connected'", {"to": target}),
                           "Permission", "unreachable", "refused")
        assert_refused(run_as(kind, "import socket\nreturn str(socket.getaddrinfo('example.com', 443))"),
                       "gaierror", "resolution", "Permission")
    finally:
        listener.close()


@KINDS
def test_the_services_store_is_out_of_reach(kind, tmp_path):
    db = tmp_path / "modelmill.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE api_keys (value TEXT)")
        conn.execute("INSERT INTO api_keys VALUES ('sk-top-secret')")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "file-abc.jsonl").write_text('{"secret": 1}\n')
    body = ("import os, sqlite3\n"
            "try:\n"
            "    conn = sqlite3.connect('file:' + item['db'] + '?mode=ro', uri=True)\n"
            "    return conn.execute('select * from api_keys').fetchall()\n"
            "except sqlite3.Error as exc:\n"
            "    pass\n"
            "return [p for p in item['paths'] if os.path.exists(p)]")
    assert_value(run_as(kind, body, {"db": str(db), "paths": [str(db), str(tmp_path / "files"), str(tmp_path)]}), [])


@KINDS
def test_keys_home_and_sources_are_out_of_reach(kind, monkeypatch):
    secret = plant_secret(monkeypatch, "sk-tool-test", "MODELMILL_API_KEY", "OPENAI_API_KEY")
    body = (secret_scan_body("KEY") +
            "seen += [p for p in item['paths'] if os.path.exists(p) and os.listdir(p)]\n"
            "seen += [p for p in ('/etc/shadow', '/etc/passwd') if os.path.exists(p)]\n"
            "return seen")
    paths = [str(Path.home() / ".modelmill"), str(Path(sandbox.__file__).resolve().parents[4]), "/work"]
    assert_value(run_as(kind, body, {"secret": secret, "paths": paths}), [])


@KINDS
def test_only_tmp_is_writable_and_only_the_sandbox_is_visible(kind):
    body = ("import os\n"
            "wrote = []\n"
            "for p in item['paths']:\n"
            "    try:\n"
            "        open(p, 'w').write('x')\n"
            "        wrote.append(p)\n"
            "    except OSError:\n"
            "        pass\n"
            "return [wrote, len([p for p in os.listdir('/proc') if p.isdigit()])]")
    paths = ["/usr/evil", "/evil", "/etc/evil", "/sandbox/lib/evil", sandbox.SANDBOX_HARNESS, "/dev/shm/evil"]
    result = run_as(kind, body, {"paths": paths})
    wrote, visible = json.loads(result.content)
    assert result.error is None and wrote == [] and visible <= 2, result


@KINDS
def test_no_privileges_no_ptrace_no_namespaces(kind):
    body = ("import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "got = []\n"
            "if os.getuid() == 0 or os.geteuid() == 0:\n"
            "    got.append('root')\n"
            "if libc.ptrace(16, 1, 0, 0) == 0 or libc.ptrace(0, 0, 0, 0) == 0:\n"
            "    got.append('ptrace')\n"
            "for flags in (0x10000000, 0x10020000, 0x40000000):\n"
            "    if libc.unshare(flags) == 0:\n"
            "        got.append('unshare')\n"
            "if libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0:\n"
            "    got.append('mount')\n"
            "status = dict(l.split(':', 1) for l in open('/proc/self/status').read().splitlines())\n"
            "if status['NoNewPrivs'].strip() != '1' or int(status['CapEff'], 16):\n"
            "    got.append('privileges')\n"
            "return got")
    assert_value(run_as(kind, body), [])


@KINDS
def test_a_fork_bomb_is_bounded(kind):
    started = time.monotonic()
    result = run_as(kind, "import os\nwhile True:\n    os.fork()")
    assert result.error is not None, result
    assert time.monotonic() - started < 20


@KINDS
def test_a_daemon_does_not_outlive_the_tool(kind):
    body = ("import os, signal, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(600)\n"
            "    os._exit(0)\n"
            "return 'started'")
    assert_value(run_as(kind, body), "started")  # the fixture checks that the daemon is gone
