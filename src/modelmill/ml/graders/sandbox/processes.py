"""Making sure nothing of a sandbox launch survives it: kill the pid namespace's init or the
process group, reap, and (as root) sweep whatever still runs as the launch's pool uid."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)


def _terminate(proc: subprocess.Popen, ns_init_pid: int | None, finished: bool) -> None:
    """Make sure nothing of this launch survives, and reap it.

    A finished harness exits by itself; under bwrap it is the pid namespace's init, so the kernel has
    killed everything else in the namespace (daemons included) by the time bwrap exits. Otherwise kill
    the namespace init, which takes the whole namespace with it. Then SIGKILL the process group while
    its leader is still unreaped (so the group id cannot have been reused), and reap."""
    if finished:
        _wait_exited(proc.pid, 1.0)
    if ns_init_pid is not None and not _wait_exited(proc.pid, 0) and _parent_of(ns_init_pid) == proc.pid:
        try:
            os.kill(ns_init_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        _wait_exited(proc.pid, 2.0)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL did not work
        log.error("python grader sandbox process %d did not die", proc.pid)
    for stream in (proc.stdout, proc.stderr):
        try:
            stream.close()
        except OSError:
            pass


def _wait_exited(pid: int, timeout: float) -> bool:
    """Wait up to timeout seconds for our child pid to exit, WITHOUT reaping it; True once it has."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(0.002, remaining))


def _parent_of(pid: int) -> int | None:
    """PPid of a process, or None when it is gone (guards against killing a recycled pid)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class LiveProcess(NamedTuple):
    pid: int
    uids: set[int]  # real, effective, saved and fs uid
    ppid: int
    cmdline: str  # arguments joined by spaces


def live_processes() -> list[LiveProcess]:
    """Every live (non-zombie) process this user can read in /proc: the one scan that the sweep below, the
    escape tests and the reliability probes filter (by pool uid, parent or command line)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").split()[:1] == ["Z"]:
            continue
        found.append(LiveProcess(int(entry), {int(u) for u in fields.get("Uid", "").split()},
                                 int(fields.get("PPid", "0").strip() or 0), cmdline))
    return found


def processes_of_uid(uid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose real, effective, saved or fs uid is uid."""
    return [p.pid for p in live_processes() if uid in p.uids]


def kill_all(pids) -> None:
    """SIGKILL each pid, ignoring the ones already gone (or no longer ours to signal)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_processes_of_uid(uid: int, attempts: int = 100) -> None:
    """SIGKILL every process of a sandbox pool uid until none is left (as root only)."""
    for _ in range(attempts):
        pids = processes_of_uid(uid)
        if not pids:
            return
        kill_all(pids)
        time.sleep(0.01)
    log.error("python grader sandbox: processes of uid %d survive SIGKILL", uid)
