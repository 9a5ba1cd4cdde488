"""Agentic RFT's MCP tools around ml/mcp_servers.py's sandboxed server processes: the shape of an
{"type": "mcp"} environment tool and the tools its server lists (environments.validate_environment,
at job creation), and the servers of each rollout group (ml/rft/multiturn.run_rollouts)."""

from __future__ import annotations

import concurrent.futures
import re

from modelmill.ml.graders.sandbox import SandboxConfig
from modelmill.ml.mcp_servers import CallOutcome, McpServer, McpServerError, probe

# ---------------------------------------------------------------- the spec (environments.validate_environment)

MCP_KEYS = {"type", "name", "source", "command", "startup_timeout_seconds", "allowed_tools"}
STARTUP_DEFAULT, STARTUP_LIMITS = 10.0, (1.0, 60.0)
# Seconds all of a job's MCP servers together may take to start and list their tools at job creation
# (environments.validate_environment starts them one after another, inside an HTTP request): without
# it, 16 servers at 60 s each could hold the request for 16 minutes.
PROBE_BUDGET_SECONDS = 60.0
MAX_COMMAND_ARGS = 64
# MCP's tool names: 1..128 of letters, digits, '_', '-', '.'; the model writes them in its tool calls.
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def check_spec(tool: dict, path: str, bad, max_source_bytes: int) -> dict:
    """The shape of an {"type": "mcp"} tool (nothing is started): exactly one of `source` (Python run
    as the server's __main__) and `command` (argv run inside the sandbox: an absolute path, or "python"
    for the sandbox's interpreter), startup_timeout_seconds, and allowed_tools (names to offer; default
    all). bad(param, message) makes the 400."""
    from modelmill import errors

    errors.reject_unknown_fields(tool, MCP_KEYS, path)
    out = {"type": "mcp", "name": tool["name"]}
    source, command = tool.get("source"), tool.get("command")
    if (source is None) == (command is None):
        raise bad(path, f"{path} must have exactly one of `source` (Python code of an MCP stdio server) and "
                        "`command` (its argv inside the sandbox)")
    if source is not None:
        if not isinstance(source, str) or not source.strip():
            raise bad(f"{path}.source", f"{path}.source must be a string of Python code")
        if len(source.encode("utf-8", "surrogatepass")) > max_source_bytes:
            raise bad(f"{path}.source", f"{path}.source is longer than {max_source_bytes} bytes")
        try:
            compile(source, "<server>", "exec")
        except SyntaxError as e:
            raise bad(f"{path}.source", f"{path}.source does not compile: {e.msg} (line {e.lineno})") from None
        except (ValueError, RecursionError, MemoryError) as e:
            raise bad(f"{path}.source", f"{path}.source does not compile: {e}") from None
        out["source"] = source
    else:
        if not isinstance(command, list) or not 1 <= len(command) <= MAX_COMMAND_ARGS \
                or not all(isinstance(a, str) and 0 < len(a) <= 4096 and "\0" not in a for a in command):
            raise bad(f"{path}.command", f"{path}.command must be a list of 1 to {MAX_COMMAND_ARGS} non-empty strings")
        if command[0] != "python" and not command[0].startswith("/"):
            raise bad(f"{path}.command[0]", f"{path}.command[0] must be an absolute path inside the sandbox or "
                                            f"\"python\", got {command[0]!r}")
        out["command"] = command
    timeout = tool.get("startup_timeout_seconds", STARTUP_DEFAULT)
    lo, hi = STARTUP_LIMITS
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not lo <= timeout <= hi:
        raise bad(f"{path}.startup_timeout_seconds", f"{path}.startup_timeout_seconds must be a number between "
                                                     f"{lo:g} and {hi:g}, got {timeout!r}")
    out["startup_timeout_seconds"] = float(timeout)
    allowed = tool.get("allowed_tools")
    if allowed is not None and (not isinstance(allowed, list) or not allowed
                                or not all(isinstance(a, str) and TOOL_NAME_RE.match(a) for a in allowed)):
        raise bad(f"{path}.allowed_tools", f"{path}.allowed_tools must be a non-empty list of tool names")
    if allowed is not None:
        out["allowed_tools"] = allowed
    return out


def list_into(spec: dict, path: str, bad, check_schema, sandbox: SandboxConfig | None,
              timeout: float | None = None) -> dict:
    """Start the server once (probe) and put the tools it lists into spec["tools"] as
    {"name", "description", "parameters"}; a server that will not start or lists a bad tool is a
    400 naming `path`. check_schema(schema, param) checks an input schema as environments does.
    timeout: seconds it may take (default its startup_timeout_seconds; less when the servers before
    it used up part of PROBE_BUDGET_SECONDS)."""
    from modelmill import errors

    own = spec["startup_timeout_seconds"]
    timeout = own if timeout is None else min(own, timeout)
    try:
        listed = probe(spec, sandbox, timeout)
    except McpServerError as e:
        if str(e).startswith("the sandbox is unavailable"):
            raise errors.ModelMillError(f"{path}: cannot start MCP servers: {e}", code="sandbox_unavailable") from None
        cut = (f" (it had {timeout:.1f} s left of the {PROBE_BUDGET_SECONDS:g} s that all of a job's MCP servers "
               "share to start at job creation)") if timeout < own else ""
        raise bad(path, f"{path}: the MCP server {spec['name']!r} did not start: {e}{cut}") from None
    allowed = spec.get("allowed_tools")
    names = [t.name for t in listed]
    for name in allowed or ():
        if name not in names:
            raise bad(f"{path}.allowed_tools", f"{path}.allowed_tools names {name!r}, but the MCP server lists only "
                                               f"{', '.join(names) or 'no tools'}")
    tools = []
    for tool in listed:
        if allowed is not None and tool.name not in allowed:
            continue
        if not TOOL_NAME_RE.match(tool.name):
            raise bad(path, f"{path}: the MCP server lists a tool named {tool.name[:200]!r}; names must be 1 to "
                            "128 letters, digits, '_', '-' or '.'")
        schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
        check_schema(schema, f"{path} (the inputSchema of its tool {tool.name!r})")
        tools.append({"name": tool.name, "description": (tool.description or "")[:4096], "parameters": schema})
    if not tools:
        raise bad(path, f"{path}: the MCP server {spec['name']!r} lists no tools")
    return {**spec, "tools": tools}


# ---------------------------------------------------------------- rollout groups (ml/rft/multiturn.py)


class Group:
    """The MCP servers of one rollout group: a fresh process per server spec, started together."""

    def __init__(self, specs: list[dict], sandbox: SandboxConfig | None, cpu_seconds: float):
        self.servers = {spec["name"]: McpServer(spec, sandbox, cpu_seconds) for spec in specs}
        self.failed: dict[str, str] = {}  # server name -> why it did not start

    def start(self) -> None:
        for name, server in self.servers.items():
            try:
                server.start(server.spec["startup_timeout_seconds"])
            except McpServerError as e:
                self.failed[name] = str(e)

    def call(self, server: str, tool: str, arguments: dict, timeout: float) -> CallOutcome:
        if server in self.failed:
            return CallOutcome(f"the MCP server {server!r} did not start: {self.failed[server]}", "crash")
        return self.servers[server].call(tool, arguments, timeout)

    def close(self) -> None:
        for server in self.servers.values():
            server.close()


def start_groups(env: dict, group_keys: list, sandbox: SandboxConfig | None, rollouts_per_group: int = 1) -> list:
    """One Group per distinct key of group_keys (a rollout's group), started concurrently; returns the
    Group of each rollout, in order. Call close_groups afterwards, whatever happens. The CPU bound of a
    server covers its start-up and every call its group can make at tool_timeout_seconds each."""
    specs = [t for t in env["tools"] if t["type"] == "mcp"]
    calls = env["max_turns"] * max(1, rollouts_per_group) * 4
    cpu = max(s["startup_timeout_seconds"] for s in specs) + env["tool_timeout_seconds"] * calls
    groups: dict = {}
    for key in group_keys:
        if key not in groups:
            groups[key] = Group(specs, sandbox, cpu)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(groups))) as pool:
        list(pool.map(Group.start, groups.values()))
    return [groups[key] for key in group_keys]


def close_groups(groups: list) -> None:
    seen = set()
    for group in groups:
        if id(group) not in seen:
            seen.add(id(group))
            group.close()
