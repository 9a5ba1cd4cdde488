"""`modelmill serve` as a child process on 127.0.0.1: the one way the demo, the benches, the
reliability tools and the end-to-end tests start a real server and wait for it.

    with running_server(home) as server:     # started and answering; stopped on exit
        client = OpenAI(base_url=server.base_url, api_key="local")

A LocalServer made directly (server = LocalServer(home) ... server.stop()) is the same server for code
that stops and restarts it at times of its own choosing (the crash and webhook durability tools).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(base_url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until GET /models answers (200, or 401 when keys exist); an early exit of `proc` is an error."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(base_url + "/models", timeout=2).status_code in (200, 401):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"server at {base_url} did not come up in {timeout:.0f}s")


def cli_command(*args: str) -> list[str]:
    """`modelmill ARGS...` with this interpreter (works without the console script on PATH)."""
    return [sys.executable, "-m", "modelmill.cli", *args]


class LocalServer:
    """A started and answering `modelmill serve` (the API, plus its worker unless worker=False).

    home: its MODELMILL_HOME (None: the environment's). env: extra environment variables. args: extra
    `serve` arguments (e.g. "--worker-process"). log: where the server's stdout and stderr go: an open
    file, or a path (appended to; closed by stop()); None: inherited. log_level: uvicorn's (None:
    serve's default). port: None = a free one. up_timeout: seconds to wait for it to answer.
    """

    def __init__(self, home: Path | str | None = None, *, worker: bool = True, env: dict | None = None,
                 args: Sequence[str] = (), log: IO | Path | str | None = None, log_level: str | None = None,
                 port: int | None = None, up_timeout: float = 120.0):
        self.home = Path(home) if home is not None else None
        self._own_log = isinstance(log, (str, Path))
        self.log_path = Path(log) if self._own_log else None
        log = open(log, "ab") if self._own_log else log  # noqa: SIM115 - the server writes to it until stop()
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.env = dict(os.environ, **(env or {}))
        if self.home is not None:
            self.env["MODELMILL_HOME"] = str(self.home)
        cmd = cli_command("serve", "--host", "127.0.0.1", "--port", str(self.port), *args)
        if not worker:
            cmd.append("--no-worker")
        if log_level:
            cmd += ["--log-level", log_level]
        self._log = log
        out = {} if log is None else {"stdout": log, "stderr": subprocess.STDOUT}
        self.proc = subprocess.Popen(cmd, env=self.env, **out)
        try:
            wait_until_up(self.base_url, self.proc, up_timeout)
        except BaseException:
            self.stop()
            raise

    def start_worker(self, env: dict | None = None, **popen) -> subprocess.Popen:
        """A `modelmill worker` process on the same home and settings."""
        return subprocess.Popen(cli_command("worker"), env=dict(self.env, **(env or {})), **popen)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL after `timeout` seconds."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._own_log and self._log is not None:
            self._log.close()

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def running_server(home: Path | str | None = None, **kwargs) -> Iterator[LocalServer]:
    """A `modelmill serve` on a free port of 127.0.0.1, started and answering when the block begins and
    stopped (SIGTERM, then SIGKILL) when it ends, however it ends. kwargs: LocalServer's."""
    server = LocalServer(home, **kwargs)
    try:
        yield server
    finally:
        server.stop()
