"""Environments of agentic RFT: the tools a reinforcement job's rollouts call while the model samples.

Checked once (`validate_environment`: the API checks a job request with it, so it imports no torch)
and run once per rollout turn (`run_tool_calls`); ml/rft/multiturn.py runs the rollouts around it.
The request field is ModelMill's documented extension `method.reinforcement.environment`
(docs/agentic_rft.md):

    {"tools": [tool, ...],            1..MAX_TOOLS, names unique
     "max_turns": 4,                  model turns per rollout (the last one must answer)
     "max_rollout_tokens": 512,       tokens after the prompt: the model's turns plus tool results
     "tool_timeout_seconds": 10,      wall clock of one call (python: the sandbox's per-call limit)
     "max_tool_output_chars": 2000,   a tool message is cut to this many characters
     "initial_state": {}}             the `state` python tools share within one rollout

    python tool: {"type": "python", "name", "description", "parameters", "source"}: `source` defines a
        module-level function named `name`, called with the model's arguments as keywords. It runs in
        the python graders' bubblewrap sandbox (ml/graders/sandbox: no network, no service files, the
        same limits) and may read and change the module-level dict `state`, the rollout's environment
        state: it starts as initial_state (or the line's "environment_state") and python graders see
        it at the end as sample["environment_state"]. It returns any JSON value (a str is sent as is).
    http tool: {"type": "http", "name", "description", "parameters", "url"}: the call is POSTed to
        `url` as {"name", "arguments"}; the response body is the result. Only hosts on the server's
        allow-list (MODELMILL_RFT_TOOL_HOSTS) may be named, and redirects are not followed.
    mcp tool: {"type": "mcp", "name", "source" or "command", "startup_timeout_seconds", "allowed_tools"}: an
        MCP server over stdio in the same sandbox (ml/mcp_tools.py, ml/mcp_servers.py). It is started once
        here to list its tools (they are stored in the entry as "tools"), and once per rollout group
        during training.

`parameters` is the JSON schema of the arguments, as in OpenAI function tools; the model's arguments
are checked against it before a tool runs. A call that cannot run (unknown tool, arguments that are
not JSON or do not match, an exception, a timeout, a crash, an HTTP error) becomes a tool message
"Error: ..." and counts as a tool error; it never fails the rollout by itself.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from modelmill import errors

MAX_TOOLS = 16
MAX_TURNS = 16
DEFAULTS = {"max_turns": 4, "max_rollout_tokens": 512, "tool_timeout_seconds": 10.0, "max_tool_output_chars": 2000}
LIMITS = {"max_turns": (1, MAX_TURNS), "max_rollout_tokens": (16, 16384), "tool_timeout_seconds": (0.1, 60.0),
          "max_tool_output_chars": (16, 16000)}
STATE_FIELD = "environment_state"  # a training line's own initial state (overrides initial_state)
MAX_STATE_BYTES = 64 * 1024  # initial_state as JSON
# All python tools' sources together: under the sandbox's 256 kB code limit with room for the dispatch
# module and repr()'s escapes.
MAX_SOURCE_BYTES = 192 * 1024
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")  # a Python identifier: python tools are functions
# Errors that are the model's (it named no tool, or wrote bad arguments): they count as tool errors but not
# toward the safety rail that fails a job whose tools keep failing (ml/rft/agentic.check_tool_failures).
MODEL_ERRORS = frozenset({"unknown_tool", "bad_arguments"})
HTTP_CONCURRENCY = 8  # HTTP tool calls of one turn in flight at once
TOOL_KEYS = {"python": {"type", "name", "description", "parameters", "source"},
             "http": {"type", "name", "description", "parameters", "url"}}
# "mcp" tools (ml/mcp_tools.py, ml/mcp_servers.py) are servers: the tools the model sees are the ones each server lists.


def _bad(param: str, message: str) -> errors.InvalidRequestError:
    return errors.InvalidRequestError(message, param=param, code="invalid_value")


# ---------------------------------------------------------------- the spec


def validate_environment(spec, path: str = "environment", *, tool_hosts: tuple[str, ...] = (), sandbox=None,
                         probe_mcp: bool = True) -> dict:
    """The environment with its defaults filled in, or InvalidRequestError naming the exact field
    (e.g. "method.reinforcement.environment.tools[1].parameters"). tool_hosts: the allow-list for
    HTTP tools ("host" or "host:port", lower-case). MCP servers are started once each (in the sandbox
    `sandbox`, a graders.sandbox.SandboxConfig; None = its defaults) to list their tools, unless
    probe_mcp is False (then they offer none until listed: tests of the shape only)."""
    if not isinstance(spec, dict):
        raise _bad(path, f"{path} must be an object")
    errors.reject_unknown_fields(spec, {"tools", *DEFAULTS, "initial_state"}, path)
    tools = spec.get("tools")
    if not isinstance(tools, list) or not 1 <= len(tools) <= MAX_TOOLS:
        raise _bad(f"{path}.tools", f"{path}.tools must be a list of 1 to {MAX_TOOLS} tools")
    out = {"tools": [], **DEFAULTS}
    for i, tool in enumerate(tools):
        out["tools"].append(_tool(tool, f"{path}.tools[{i}]", tool_hosts))
    names = [t["name"] for t in out["tools"]]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise _bad(f"{path}.tools[{i}].name", f"{path}.tools[{i}].name: a tool named {name!r} is already defined")
    size = sum(len(t["source"].encode("utf-8", "surrogatepass")) for t in out["tools"] if t["type"] == "python")
    if size > MAX_SOURCE_BYTES:
        raise _bad(f"{path}.tools", f"the python tools' sources are {size} bytes together; the limit is "
                                    f"{MAX_SOURCE_BYTES}")
    for key, (lo, hi) in LIMITS.items():
        if key in spec:
            value = spec[key]
            integer = key != "tool_timeout_seconds"
            if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
                    or not lo <= value <= hi:
                kind = "an integer" if integer else "a number"
                raise _bad(f"{path}.{key}", f"{path}.{key} must be {kind} between {lo:g} and {hi:g}, got {value!r}")
            out[key] = value if integer else float(value)
    out["initial_state"] = check_state(spec.get("initial_state", {}), f"{path}.initial_state")
    if probe_mcp:  # last: every cheap check first, so a malformed environment starts no server
        _list_mcp_tools(out, path, sandbox)
    return out


def check_state(state, param: str) -> dict:
    """A JSON object of at most MAX_STATE_BYTES, or InvalidRequestError(param)."""
    if not isinstance(state, dict):
        raise _bad(param, f"{param} must be a JSON object")
    try:
        size = len(json.dumps(state, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise _bad(param, f"{param} must be plain JSON: {e}") from None
    if size > MAX_STATE_BYTES:
        raise _bad(param, f"{param} is {size} bytes of JSON; the limit is {MAX_STATE_BYTES}")
    return state


def _tool(tool, path: str, tool_hosts: tuple[str, ...]) -> dict:
    if not isinstance(tool, dict):
        raise _bad(path, f"{path} must be an object")
    kind = tool.get("type")
    if kind not in (*TOOL_KEYS, "mcp"):
        raise _bad(f"{path}.type", f"{path}.type must be 'python', 'http' or 'mcp', got {kind!r}")
    name = tool.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _bad(f"{path}.name", f"{path}.name must be 1 to 64 letters, digits or '_', not starting with a "
                                   f"digit, got {name!r}")
    if kind == "mcp":
        from modelmill.ml import mcp_tools

        return mcp_tools.check_spec(tool, path, _bad, MAX_SOURCE_BYTES)
    errors.reject_unknown_fields(tool, TOOL_KEYS[kind], path)
    description = tool.get("description", "")
    if not isinstance(description, str) or len(description) > 4096:
        raise _bad(f"{path}.description", f"{path}.description must be a string of at most 4096 characters")
    out = {"type": kind, "name": name, "description": description,
           "parameters": _parameters(tool.get("parameters", {"type": "object", "properties": {}}),
                                     f"{path}.parameters")}
    if kind == "python":
        out["source"] = _python_source(tool.get("source"), name, f"{path}.source")
    else:
        out["url"] = _url(tool.get("url"), f"{path}.url", tool_hosts)
    return out


def _parameters(schema, param: str, label: str | None = None) -> dict:
    """A JSON schema for an object of arguments (OpenAI's function `parameters`), checked as a schema.
    label: what the message calls it (default: param)."""
    import jsonschema

    label = label or param
    if not isinstance(schema, dict) or schema.get("type") != "object":
        raise _bad(param, f"{label} must be a JSON schema with \"type\": \"object\"")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        where = "".join(f"[{p!r}]" for p in e.absolute_path)
        raise _bad(param, f"{label}{where} is not a valid JSON schema: {e.message}") from None
    return schema


def _list_mcp_tools(env: dict, path: str, sandbox) -> None:
    """Start each MCP server once to list its tools (ml/mcp_tools.list_into); the tools every kind
    offers together must have unique names, and at most MAX_TOOLS of them."""
    from modelmill.ml import mcp_tools

    budget = mcp_tools.PROBE_BUDGET_SECONDS
    deadline = time.monotonic() + budget  # all the servers together (mcp_tools.PROBE_BUDGET_SECONDS)
    for i, tool in enumerate(env["tools"]):
        if tool["type"] == "mcp":
            where, left = f"{path}.tools[{i}]", deadline - time.monotonic()
            if left < mcp_tools.STARTUP_LIMITS[0]:
                raise _bad(where, f"{where}: the MCP server {tool['name']!r} was not started: the environment's "
                                  f"MCP servers may take {budget:g} s in all to start at job creation, and the ones "
                                  "before it used that up")
            env["tools"][i] = mcp_tools.list_into(
                tool, where, _bad, lambda schema, label, where=where: _parameters(schema, where, label), sandbox,
                timeout=left)
    seen: dict[str, str] = {}
    for i, tool in enumerate(env["tools"]):
        for name, _ in offered(tool):
            if name in seen:
                raise _bad(f"{path}.tools[{i}]", f"{path}.tools[{i}] offers a tool named {name!r}, and so does "
                                                 f"{seen[name]}")
            seen[name] = f"{path}.tools[{i}]"
    if len(seen) > MAX_TOOLS:
        raise _bad(f"{path}.tools", f"the environment offers {len(seen)} tools in all (its MCP servers' included); "
                                    f"the limit is {MAX_TOOLS} (an MCP tool's allowed_tools picks some)")


def offered(tool: dict) -> list[tuple[str, dict]]:
    """(name, {"description", "parameters"}) of each tool a validated tool entry offers the model: itself,
    or for an MCP server the tools it listed."""
    if tool["type"] == "mcp":
        return [(t["name"], t) for t in tool.get("tools", [])]
    return [(tool["name"], tool)]


def _python_source(source, name: str, param: str) -> str:
    if not isinstance(source, str) or not source.strip():
        raise _bad(param, f"{param} must be a string of Python code")
    if len(source.encode("utf-8", "surrogatepass")) > MAX_SOURCE_BYTES:
        raise _bad(param, f"{param} is longer than {MAX_SOURCE_BYTES} bytes")
    try:
        tree = ast.parse(source, filename="<tool>")
        compile(tree, "<tool>", "exec")
    except SyntaxError as e:
        raise _bad(param, f"{param} does not compile: {e.msg} (line {e.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise _bad(param, f"{param} does not compile: {e}") from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body):
        raise _bad(param, f"{param} must define a function {name}(...) at module level (the tool's name)")
    return source


def _url(url, param: str, tool_hosts: tuple[str, ...]) -> str:
    import httpx

    try:
        parsed = httpx.URL(url) if isinstance(url, str) else None
    except (httpx.InvalidURL, ValueError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise _bad(param, f"{param} must be an http:// or https:// URL, got {url!r}")
    if not host_allowed(url, tool_hosts):
        raise _bad(param, f"{param}: host {parsed.host!r} is not on the server's allow-list for tools "
                          f"(MODELMILL_RFT_TOOL_HOSTS{': ' + ', '.join(tool_hosts) if tool_hosts else ' is empty'})")
    return url


def host_allowed(url: str, tool_hosts: tuple[str, ...]) -> bool:
    """Whether the URL's host ("host", or "host:port" when the list names a port) is on the allow-list."""
    import httpx

    parsed = httpx.URL(url)
    host = (parsed.host or "").lower()
    return host in tool_hosts or (parsed.port is not None and f"{host}:{parsed.port}" in tool_hosts)


def initial_state(env: dict, item: dict) -> dict:
    """A rollout's starting state: the line's "environment_state" when it has one, else initial_state
    (a copy: rollouts never share state)."""
    state = item.get(STATE_FIELD) if isinstance(item.get(STATE_FIELD), dict) else env.get("initial_state", {})
    return copy.deepcopy(state)


def template_tools(env: dict) -> list[dict]:
    """The tools as the chat template lists them (OpenAI function definitions)."""
    return [{"type": "function", "function": {"name": name, "description": t["description"],
                                              "parameters": t["parameters"]}}
            for tool in env["tools"] for name, t in offered(tool)]


# ---------------------------------------------------------------- running calls


@dataclass(frozen=True)
class ToolCall:
    """One call a model made: which rollout (an index into the states list), the call's id, the
    tool's name and its arguments as the model wrote them (JSON text)."""

    rollout: int
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolResult:
    content: str  # the tool message's content: the result, or "Error: ..." (cut to max_tool_output_chars)
    error: str | None  # None, or: unknown_tool, bad_arguments, error, timeout, crash, http_error, host_not_allowed
    seconds: float  # wall time of the call (for a sandboxed call: its share of the launch)


def run_tool_calls(env: dict, calls: list[ToolCall], states: list[dict], *, sandbox=None,
                   tool_hosts: tuple[str, ...] = (), servers: list | None = None) -> list[ToolResult]:
    """Run one turn's calls: python tools in ONE sandbox launch per round (the k-th call of every
    rollout is round k, so a rollout's calls see each other's state changes), HTTP tools concurrently,
    MCP tools on the rollout's own servers (servers[c.rollout]: mcp_tools.Group; one call at a time
    per group, groups concurrently). states[c.rollout] is updated with what python tools leave in
    `state`. Never raises for what a tool does. sandbox: a graders.sandbox.SandboxConfig (its
    wall_seconds is replaced by tool_timeout_seconds)."""
    by_name = {name: (tool, listed) for tool in env["tools"] for name, listed in offered(tool)}
    results: list[ToolResult | None] = [None] * len(calls)
    python, http, mcp = [], [], []
    for i, call in enumerate(calls):
        tool, listed = by_name.get(call.name, (None, None))
        if tool is None:
            results[i] = _error(env, "unknown_tool", f"there is no tool named {call.name!r}; the tools are "
                                                     f"{', '.join(by_name)}")
            continue
        args, problem = _arguments(listed, call.arguments)
        if problem is not None:
            results[i] = _error(env, "bad_arguments", problem)
            continue
        {"python": python, "http": http, "mcp": mcp}[tool["type"]].append((i, call, args))
    if python:
        _run_python(env, python, states, results, sandbox)
    if http:
        _run_http(env, http, results, tool_hosts)
    if mcp:
        _run_mcp(env, mcp, results, servers, {name: tool["name"] for name, (tool, _) in by_name.items()})
    return results  # type: ignore[return-value]


def _arguments(tool: dict, text: str) -> tuple[dict | None, str | None]:
    import jsonschema

    try:
        args = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return None, f"the arguments are not JSON: {str(text)[:200]!r}"
    if not isinstance(args, dict):
        return None, "the arguments must be a JSON object"
    problem = jsonschema.validators.validator_for(tool["parameters"])(tool["parameters"]).iter_errors(args)
    first = next(iter(problem), None)
    if first is not None:
        where = ".".join(str(p) for p in first.absolute_path)
        return None, f"the arguments do not match the tool's parameters{' at ' + where if where else ''}: " \
                     f"{first.message[:300]}"
    return args, None


def _cut(env: dict, text: str) -> str:
    limit = env["max_tool_output_chars"]
    return text if len(text) <= limit else text[:limit] + "...[cut]"


def _error(env: dict, kind: str, message: str, seconds: float = 0.0) -> ToolResult:
    return ToolResult(_cut(env, f"Error: {message}"), kind, seconds)


# The module every sandbox launch of a turn runs: each python tool's source in its own namespace (so two
# tools' helpers never clash), and the harness's grade() entry point dispatching one call per sample.
# The harness (ml/graders/sandbox/harness.py) runs it with "returns": "json", so grade() may return
# any JSON value.
_DISPATCH = '''
import inspect as _mm_inspect

_MM_TOOLS = {}
for _mm_name, _mm_source in _MM_SOURCES.items():
    _MM_TOOLS[_mm_name] = {"__name__": "tool_" + _mm_name, "state": {}}
    exec(compile(_mm_source, "<grader>", "exec"), _MM_TOOLS[_mm_name])


def grade(sample, item):
    namespace = _MM_TOOLS[sample["tool"]]
    function = namespace[sample["tool"]]
    try:  # arguments the function does not take are the model's mistake, not the tool's failure
        _mm_inspect.signature(function).bind(**sample["arguments"])
    except TypeError as exc:
        return {"bad_arguments": str(exc)}
    namespace["state"] = sample["state"]
    result = function(**sample["arguments"])
    return {"result": result, "state": namespace["state"]}
'''


def _run_python(env: dict, calls: list, states: list[dict], results: list, sandbox) -> None:
    from dataclasses import replace

    from modelmill.ml.graders import sandbox as sandbox_mod

    base = sandbox if sandbox is not None else sandbox_mod.SandboxConfig()
    config = replace(base, wall_seconds=min(env["tool_timeout_seconds"], sandbox_mod.MAX_WALL_SECONDS),
                     batch_wall_seconds=None, returns="json")
    source = "_MM_SOURCES = " + repr({t["name"]: t["source"] for t in env["tools"] if t["type"] == "python"}) \
        + "\n" + _DISPATCH
    rounds: dict[int, list] = {}
    seen: dict[int, int] = {}
    for entry in calls:
        k = seen[entry[1].rollout] = seen.get(entry[1].rollout, -1) + 1
        rounds.setdefault(k, []).append(entry)
    for k in sorted(rounds):
        batch = rounds[k]
        samples = [{"tool": c.name, "arguments": args, "state": states[c.rollout]} for _, c, args in batch]
        started = time.perf_counter()
        outcomes = sandbox_mod.run_python_grader(source, samples, [{}] * len(samples), config)
        share = (time.perf_counter() - started) / len(batch)
        for (i, call, _), outcome in zip(batch, outcomes, strict=True):
            results[i] = _from_outcome(env, outcome, states, call.rollout, share)


def _from_outcome(env: dict, outcome, states: list[dict], rollout: int, seconds: float) -> ToolResult:
    if outcome.error is not None:
        details = outcome.details or ""
        if outcome.error == "python_grader_server_error":
            return _error(env, "crash", f"the tool's sandbox failed ({details}): {outcome.message or ''}".strip(),
                          seconds)
        kind = "timeout" if details.startswith("timeout") else "error"
        return _error(env, kind, details.replace("grade()", "the tool"), seconds)
    value = json.loads(outcome.value)
    if "bad_arguments" in value:
        return _error(env, "bad_arguments", f"the arguments do not fit the tool: {value['bad_arguments']}", seconds)
    if not isinstance(value.get("state"), dict):
        return _error(env, "error", "the tool replaced `state` with something that is not a dict", seconds)
    states[rollout].clear()
    states[rollout].update(value["state"])
    result = value.get("result")
    return ToolResult(_cut(env, result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)),
                      None, seconds)


def _run_mcp(env: dict, calls: list, results: list, servers: list | None, server_of: dict[str, str]) -> None:
    """MCP calls, each on its rollout's group's server: a group's calls in order (they share the
    server's state), the groups concurrently."""
    timeout = env["tool_timeout_seconds"]
    by_group: dict[int, list] = {}
    for entry in calls:
        group = servers[entry[1].rollout] if servers is not None else None
        by_group.setdefault(id(group), [group]).append(entry)

    def one_group(entries: list) -> None:
        group, *rest = entries
        for i, call, args in rest:
            started = time.perf_counter()
            if group is None:
                results[i] = _error(env, "crash", "no MCP server runs for this rollout")
                continue
            outcome = group.call(server_of[call.name], call.name, args, timeout)
            seconds = time.perf_counter() - started
            results[i] = ToolResult(_cut(env, outcome.content if outcome.error is None else f"Error: {outcome.content}"),
                                    outcome.error, seconds)

    with ThreadPoolExecutor(max_workers=min(HTTP_CONCURRENCY, len(by_group))) as pool:
        list(pool.map(one_group, by_group.values()))


def _run_http(env: dict, calls: list, results: list, tool_hosts: tuple[str, ...]) -> None:
    import httpx

    by_name = {t["name"]: t for t in env["tools"]}
    timeout = env["tool_timeout_seconds"]

    def one(entry) -> tuple[int, ToolResult]:
        i, call, args = entry
        url = by_name[call.name]["url"]
        started = time.perf_counter()
        if not host_allowed(url, tool_hosts):  # the allow-list may have shrunk since the job was created
            return i, _error(env, "host_not_allowed", f"the host of {url} is not on the server's allow-list")
        limit = 4 * env["max_tool_output_chars"]  # bytes read at most: a huge body is cut, not buffered
        try:
            # httpx's timeout is per network step; the deadline also bounds a server that trickles bytes.
            with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client, \
                    client.stream("POST", url, json={"name": call.name, "arguments": args}) as response:
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) >= limit:
                        break
                    if time.perf_counter() - started > timeout:
                        raise httpx.ReadTimeout("deadline")
        except httpx.TimeoutException:
            return i, _error(env, "timeout", f"the tool did not answer within {timeout:g}s",
                             time.perf_counter() - started)
        except httpx.HTTPError as e:
            return i, _error(env, "http_error", f"{type(e).__name__}: {e}", time.perf_counter() - started)
        seconds = time.perf_counter() - started
        text = body[:limit].decode("utf-8", "replace")
        if not response.is_success:
            return i, _error(env, "http_error", f"HTTP {response.status_code}: {text}", seconds)
        return i, ToolResult(_cut(env, text), None, seconds)

    with ThreadPoolExecutor(max_workers=min(HTTP_CONCURRENCY, len(calls))) as pool:
        for i, result in pool.map(one, calls):
            results[i] = result
