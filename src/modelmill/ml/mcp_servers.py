"""MCP servers of agentic RFT (docs/agentic_rft.md): an environment tool {"type": "mcp", ...} is a
Model Context Protocol server spoken to over stdio, started inside the python graders' bubblewrap
sandbox (ml/graders/sandbox: no network, no service files, the same memory/process/CPU bounds).

- At job creation `probe` starts the server once, runs `initialize` and `tools/list`, and stops it:
  the tools the model sees (names, descriptions, input schemas) come from the server, and a server that
  will not start, hangs or lists bad schemas is a 400 then, not a failed job (ml/mcp_tools.list_into).
- During rollouts ml/mcp_tools.start_groups starts one fresh server process per rollout group (the rollouts of
  one prompt), so no state leaks from one group to another; each call is `tools/call` with the
  environment's tool_timeout_seconds. A call that times out or finds the server dead becomes a tool
  error ("timeout" / "crash"), the server is stopped, and the group's later calls get the same error.
- `McpServer.close` kills the sandbox's pid namespace (every process the server started goes with it),
  reaps it, and as root sweeps the launch's pool uid, as the grader sandbox does after a batch.

The client side is the official SDK's `mcp.ClientSession` (initialize, list_tools, call_tool and the
JSON-RPC correlation). Its `stdio_client` transport is not used: it spawns the server itself with
anyio.open_process, which cannot pass the seccomp and info fds bwrap needs, wrap the launch in its
memory cgroup or kill the pid namespace's init; so the process is started as the grader sandbox starts
one, and two small pumps move newline-delimited JSON-RPC between its pipes and the session's streams
(the framing stdio_client uses). The SDK is async and rollouts are not: each server's session lives
on a private event loop thread, and calls wait on it with a deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, replace

from modelmill.ml.graders.sandbox import SANDBOX_LIB, SandboxBusy, SandboxConfig, bounds, kill_processes_of_uid
from modelmill.ml.graders.sandbox.backends import _backend  # noqa: PLC2701 - the sandbox's own backend lookup
from modelmill.ml.graders.sandbox.backends import ns_init_pid
from modelmill.ml.graders.sandbox.config import DEFAULT_PACKAGES
from modelmill.ml.graders.sandbox.policy import rlimits
from modelmill.ml.graders.sandbox.processes import _parent_of  # noqa: PLC2701 - the sandbox's own check

MAX_LINE_BYTES = 1024 * 1024  # one JSON-RPC message from a server; a longer line stops it
STDERR_TAIL = 4000  # characters of a server's stderr quoted when it fails
# A server may be written with the MCP SDK itself: these site-packages entries (those installed) are
# bound into its sandbox besides the python graders' packages.
MCP_PACKAGES = DEFAULT_PACKAGES + (
    "mcp", "mcp_types", "anyio", "sniffio", "starlette", "sse_starlette", "uvicorn", "h11", "httpx", "httpx2",
    "httpcore", "certifi", "idna", "python_multipart", "multipart", "jwt", "opentelemetry", "a2wsgi", "click",
    "cryptography", "cffi", "_cffi_backend*", "pycparser", "pydantic_settings", "dotenv",
    # read with importlib.metadata when they load
    "httpx2-*.dist-info", "mcp-*.dist-info", "mcp_types-*.dist-info", "opentelemetry_api-*.dist-info",
)


def _describe(e: BaseException) -> str:
    """'Type: message' of the exception that matters (anyio wraps it in one-member ExceptionGroups)."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {str(e)[:500]}"


# Every server process is started from this one long-lived thread: bwrap's --die-with-parent is a
# PR_SET_PDEATHSIG, which fires when the *thread* that started it ends, and the setpriv inside clears it
# for the server itself; started from a short-lived pool thread, bwrap would die and orphan the server.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcp-spawn")


class McpServerError(RuntimeError):
    """The server could not be started, initialized or listed (the message says which and why)."""


@dataclass(frozen=True)
class CallOutcome:
    content: str  # the result's text, or what went wrong
    error: str | None  # None, "error" (the tool said isError / a JSON-RPC error), "timeout" or "crash"


def _text_of(result) -> str:
    """A CallToolResult as one text: its text blocks joined, other blocks (and structuredContent when
    there are none) as JSON."""
    parts = []
    for block in result.content or []:
        text = getattr(block, "text", None)
        parts.append(text if isinstance(text, str) else block.model_dump_json(by_alias=True, exclude_none=True))
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


class McpServer:
    """One sandboxed MCP server process and its client session (see the module docstring)."""

    def __init__(self, spec: dict, sandbox: SandboxConfig | None, cpu_seconds: float):
        self.spec, self.name = spec, spec["name"]
        base = sandbox if sandbox is not None else SandboxConfig()
        self.config = replace(base, packages=MCP_PACKAGES if base.packages == DEFAULT_PACKAGES else base.packages)
        self.cpu_seconds = cpu_seconds
        self.proc: subprocess.Popen | None = None
        self.dead: str | None = None  # why calls no longer go to the server
        self._stderr = b""
        self._ns_init_pid = self._cgroup = self._launch = None
        self._loop = self._thread = self._session = self._stop = self._main = None
        self._closed = self._reaped = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------ starting

    def start(self, timeout: float) -> list:
        """Start the server, initialize it and list its tools (mcp_types.Tool), all within timeout
        seconds; raises McpServerError (the server is then already stopped)."""
        deadline = time.monotonic() + timeout
        try:
            self._spawn(deadline)
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"mcp-{self.name}")
            self._thread.start()
            ready: concurrent.futures.Future = concurrent.futures.Future()
            self._main = asyncio.run_coroutine_threadsafe(self._run(ready), self._loop)
            try:
                return ready.result(max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                raise McpServerError(f"it did not answer initialize and tools/list within {timeout:g}s"
                                     + self._stderr_note()) from None
            except McpServerError:
                raise
            except Exception as e:  # noqa: BLE001 - whatever the session raised: the server's fault
                raise McpServerError(f"{self._death_note(wait=1.0) or _describe(e)}{self._stderr_note()}") from None
        except BaseException:
            self.close()
            raise

    def _spawn(self, deadline: float) -> None:
        config = self.config
        backend = _backend(config)
        reason = backend.unavailable_reason(config) or bounds.unavailable_reason(config)
        if reason is not None:
            raise McpServerError(f"the sandbox is unavailable here: {reason}")
        plan = bounds.plan(config)
        request = {"limits": rlimits(config, plan, self.cpu_seconds),
                   "path": [SANDBOX_LIB] if config.backend == "bwrap" else []}
        request.update({"command": self.spec["command"]} if self.spec.get("command") else
                       {"source": self.spec["source"]})
        header = json.dumps(request).encode("utf-8", "surrogatepass")
        try:
            self._launch = launch = backend.launch(config)
        except SandboxBusy as e:
            raise McpServerError(str(e)) from None
        argv = launch.argv + ["--serve"]
        if plan.mechanism != "rlimit":
            self._cgroup = bounds.LaunchCgroup(plan)
            argv = self._cgroup.wrap(argv)
        try:
            self.proc = _SPAWNER.submit(
                subprocess.Popen, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={},
                cwd="/", close_fds=True, pass_fds=launch.pass_fds, start_new_session=True).result()
        except OSError as e:
            raise McpServerError(f"cannot start the sandbox: {e}") from None
        finally:
            for fd in launch.pass_fds:
                os.close(fd)
        threading.Thread(target=self._drain_stderr, daemon=True, name=f"mcp-{self.name}-stderr").start()
        self._read_ns_init(deadline)
        try:
            self.proc.stdin.write(f"{len(header)}\n".encode() + header)
            self.proc.stdin.flush()
        except OSError:
            pass  # it died already: the session sees its stdout end

    def _read_ns_init(self, deadline: float) -> None:
        """The pid of the sandbox's namespace init, from bwrap's --info-fd (killing it ends the namespace)."""
        fd = self._launch.info_fd
        if fd is None:
            return
        info = b""
        while time.monotonic() < deadline and len(info) < 4096:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                break
            info += chunk
            pid = ns_init_pid(info)
            if pid is not None:
                self._ns_init_pid = pid
                break

    def _drain_stderr(self) -> None:
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
            self._stderr = (self._stderr + chunk)[-4 * STDERR_TAIL:]

    def _stderr_note(self) -> str:
        text = self._stderr.decode("utf-8", "replace").strip()
        return f"; its stderr ends: {text[-STDERR_TAIL:]}" if text else ""

    def _death_note(self, wait: float = 0.0) -> str | None:
        """"the server exited (status N)" once it has (waiting up to `wait` seconds), else None."""
        if self.proc is None:
            return None
        try:
            rc = self.proc.wait(wait) if wait else self.proc.poll()
        except subprocess.TimeoutExpired:
            rc = None
        return None if rc is None else f"the server exited (status {rc})"

    # ------------------------------------------------------------ the session (on the loop thread)

    async def _run(self, ready: concurrent.futures.Future) -> None:
        import anyio
        import mcp_types
        from mcp.client.session import ClientSession

        self._stop = asyncio.Event()
        read_send, read_recv = anyio.create_memory_object_stream(0)
        write_send, write_recv = anyio.create_memory_object_stream(0)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._pump_out, read_send)
                tasks.start_soon(self._pump_in, write_recv)
                async with ClientSession(read_recv, write_send) as session:
                    await session.initialize()
                    tools, cursor = [], None
                    while True:
                        page = await session.list_tools(
                            params=mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None)
                        tools += page.tools
                        cursor = page.next_cursor
                        if not cursor or len(tools) > 1000:
                            break
                    self._session = session
                    ready.set_result(tools)
                    await self._stop.wait()
                tasks.cancel_scope.cancel()
        except BaseException as e:  # noqa: BLE001 - handed to start(); a later end shows as a dead server
            if not ready.done():
                ready.set_exception(e if isinstance(e, Exception) else McpServerError(type(e).__name__))

    async def _pump_out(self, send) -> None:
        """Server stdout -> session: one JSON-RPC message per line (a line that is not one reaches the
        session as an exception, as in the SDK's stdio transport)."""
        import anyio
        import mcp_types
        from mcp.shared.message import SessionMessage

        async with send:
            while True:
                line = await anyio.to_thread.run_sync(self.proc.stdout.readline, MAX_LINE_BYTES + 1,
                                                      abandon_on_cancel=True)
                if not line:
                    return
                if len(line) > MAX_LINE_BYTES:
                    self._fail(f"it sent a message over {MAX_LINE_BYTES} bytes")
                    return
                if not line.strip():
                    continue
                try:
                    message = SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
                except ValueError as e:
                    message = e
                await send.send(message)

    async def _pump_in(self, receive) -> None:
        """Session -> server stdin, one JSON line per message."""
        import anyio

        def write(data: bytes) -> None:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (OSError, ValueError):
                pass  # the server is gone: its stdout ends and the session sees that

        async with receive:
            async for message in receive:
                data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                await anyio.to_thread.run_sync(write, data.encode("utf-8", "surrogatepass"), abandon_on_cancel=True)

    # ------------------------------------------------------------ calls

    def call(self, name: str, arguments: dict, timeout: float) -> CallOutcome:
        """tools/call within timeout seconds. Never raises."""
        if self.dead is not None or self._session is None:
            return CallOutcome(f"the MCP server {self.name!r} is not running: {self.dead or 'it never started'}",
                               "crash")
        future = asyncio.run_coroutine_threadsafe(self._session.call_tool(name, arguments), self._loop)
        try:
            result = future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._fail(f"a call of {name} took longer than {timeout:g}s")
            return CallOutcome(f"the tool did not answer within {timeout:g}s (the MCP server {self.name!r} was "
                               "stopped)", "timeout")
        except Exception as e:  # noqa: BLE001 - a JSON-RPC error from a live server, or the server's end
            death = self._death_note(wait=0.2)
            if death is None and type(e).__name__ == "MCPError":
                return CallOutcome(f"{e}"[:1000], "error")
            self._fail(death or _describe(e))
            return CallOutcome(f"the MCP server {self.name!r} failed: {self.dead}{self._stderr_note()}", "crash")
        return CallOutcome(_text_of(result), "error" if result.is_error else None)

    def _fail(self, why: str) -> None:
        """Stop calling the server and kill it (it may be stuck)."""
        if self.dead is None:
            self.dead = why
        self._kill()

    # ------------------------------------------------------------ stopping

    def _kill(self) -> None:
        """Kill the sandbox and reap it; idempotent. As processes._terminate does for a grader launch:
        the pid namespace's init (the kernel then kills everything in the namespace), as root every
        process of the launch's pool uid, then bwrap's process group. The pipes are closed later, in
        close(), once the threads reading them have seen them end (closing under a reader blocks)."""
        with self._lock:
            proc = self.proc
            if proc is None or self._reaped:
                return
            self._reaped = True
        ns_init = self._ns_init_pid
        if ns_init is not None and proc.poll() is None and _parent_of(ns_init) == proc.pid:
            try:
                os.kill(ns_init, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        launch = self._launch
        if launch is not None and launch.sweep_uid is not None:
            kill_processes_of_uid(launch.sweep_uid)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(10.0)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL did not work
            pass

    def close(self) -> None:
        """Stop the server and its session; nothing of the launch is left. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.dead = self.dead or "it was stopped"
        self._kill()
        if self._loop is not None:
            if self._stop is not None:
                self._loop.call_soon_threadsafe(self._stop.set)
            if self._main is not None:
                try:
                    self._main.result(5.0)
                except BaseException:  # noqa: BLE001 - ending anyway
                    self._main.cancel()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            if not self._thread.is_alive():
                self._loop.close()
        if self.proc is not None:
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                try:
                    stream.close()
                except (OSError, ValueError):
                    pass
        launch = self._launch
        if launch is not None:
            if launch.info_fd is not None:
                try:
                    os.close(launch.info_fd)
                except OSError:
                    pass
            if self._cgroup is not None:
                self._cgroup.destroy()
            if launch.release is not None:
                launch.release()
            self._launch = None


def probe(spec: dict, sandbox: SandboxConfig | None, timeout: float) -> list:
    """Start the server once, list its tools (mcp_types.Tool) and stop it; McpServerError if it cannot."""
    server = McpServer(spec, sandbox, cpu_seconds=timeout)
    try:
        return server.start(timeout)
    finally:
        server.close()
