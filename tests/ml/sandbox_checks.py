"""Checks shared by the sandbox tests (graders, tool environments, MCP servers): a planted secret that
code inside a sandbox must not find, and the wait for a test's sandbox processes to be gone."""

from __future__ import annotations

import os
import time


def plant_secret(monkeypatch, prefix: str, *env_names: str) -> str:
    """A fresh secret string, set in this process's environment under each of env_names."""
    secret = f"{prefix}-{os.getpid()}-{time.time_ns()}"
    for name in env_names:
        monkeypatch.setenv(name, secret)
    return secret


def secret_scan_body(name_marker: str) -> str:
    """Python lines, run inside a sandbox with item['secret']: `seen` lists the environment variables
    that hold the secret or whose name contains name_marker, and every pid whose /proc/<pid>/environ
    holds it. The caller appends what to return."""
    return ("import os\n"
            f"seen = [k for k, v in os.environ.items() if item['secret'] in v or {name_marker!r} in k]\n"
            "for pid in os.listdir('/proc'):\n"
            "    if pid.isdigit():\n"
            "        try:\n"
            "            if item['secret'].encode() in open(f'/proc/{pid}/environ', 'rb').read():\n"
            "                seen.append(pid)\n"
            "        except OSError:\n"
            "            pass\n")


def left_after(live, seconds: float) -> list:
    """live() once it is empty, or when `seconds` have passed: processes exit a moment after the
    sandbox call that started them returns."""
    deadline = time.monotonic() + seconds
    while live() and time.monotonic() < deadline:
        time.sleep(0.05)
    return live()
