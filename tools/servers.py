"""A `modelmill serve` subprocess with the official openai SDK on it, for the end-to-end tests and the
reliability suites (modelmill.local_server starts and stops the process)."""

from __future__ import annotations

from pathlib import Path

from openai import OpenAI

from modelmill.local_server import LocalServer


class Server(LocalServer):
    """A server subprocess (modelmill.local_server: API, optionally with its in-process worker) and the
    official openai SDK on it, without retries so that a test sees every error."""

    def __init__(self, home: Path, worker: bool = True, env: dict | None = None):
        super().__init__(home, worker=worker, env=env)
        self.client = OpenAI(base_url=self.base_url, api_key="test-key", max_retries=0)
