"""The crash points the reliability suite uses: MODELMILL_CRASH_AT="name:N" SIGKILLs the process the
Nth time crash_point(name) runs, and nothing happens without it."""

from __future__ import annotations

import signal
import subprocess
import sys

SCRIPT = ("from modelmill.faults import crash_point\n"
          "for i in range(5):\n"
          "    crash_point('store_commit')\n"
          "    crash_point('checkpoint_publish')\n"
          "    print(i, flush=True)\n")


def run(env_value: str | None) -> subprocess.CompletedProcess:
    import os

    env = {k: v for k, v in os.environ.items() if k != "MODELMILL_CRASH_AT"}
    if env_value is not None:
        env["MODELMILL_CRASH_AT"] = env_value
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)


def test_crash_point_kills_on_the_nth_hit_of_its_name_only():
    done = run("store_commit:3")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["0", "1"]  # killed in the third pass, before printing 2


def test_no_crash_without_the_variable_or_for_another_name():
    assert run(None).stdout.split() == ["0", "1", "2", "3", "4"]
    assert run("adapter_publish:1").returncode == 0
