"""Sandbox backends: how one harness process is started. `BACKENDS` maps a name to a backend:
  "bwrap"              bubblewrap (Debian's `bubblewrap`): the default, and the only safe one.
  "unsafe-subprocess"  a bare `python -I -S` child with rlimits and NO isolation: development only;
                       it logs a warning on every use.
A backend says why it cannot run here (unavailable_reason) or gives a Launch: the argv, the fds the
child inherits, and as root the pool uid the grader runs as (see the package docstring)."""

from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import platform
import shutil
import sys
import sysconfig
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from .config import HARNESS, SANDBOX_HARNESS, SANDBOX_LIB, SANDBOX_UID_UNPRIVILEGED, SandboxConfig
from .policy import seccomp_program

log = logging.getLogger(__name__)

@dataclass
class Launch:
    """How to start one sandboxed harness process."""

    argv: list[str]
    # Open fds the child must inherit (seccomp program, info pipe); closed by the runner after spawn.
    pass_fds: list[int] = field(default_factory=list)
    # Read end of bwrap's --info-fd pipe (JSON with the namespace init's pid), or None.
    info_fd: int | None = None
    # uid the grader runs as when it is ours alone (root + pool): processes left with it are killed.
    sweep_uid: int | None = None
    # Called once the process is gone (returns the uid to the pool).
    release: Callable[[], None] | None = None


def ns_init_pid(info: bytes) -> int | None:
    """The namespace init's pid from what bwrap has written to --info-fd so far (JSON {"child-pid": N});
    None while that is incomplete or holds no plausible pid (killing the init ends the namespace)."""
    try:
        pid = json.loads(info.decode()).get("child-pid")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 1 else None


class SandboxBackend(Protocol):
    name: str

    def unavailable_reason(self, config: SandboxConfig) -> str | None:
        """None when this backend can run here, else why not."""

    def launch(self, config: SandboxConfig) -> Launch:
        """The command for one harness process (may raise SandboxBusy)."""


class SandboxBusy(RuntimeError):
    pass


class _UidPool:
    def __init__(self):
        self._lock = threading.Lock()
        self._used: set[int] = set()
        self._counter = itertools.count()

    def acquire(self, base: int, size: int) -> int:
        with self._lock:
            for _ in range(size):
                uid = base + next(self._counter) % size
                if uid not in self._used:
                    self._used.add(uid)
                    return uid
        raise SandboxBusy(f"all {size} sandbox uids are in use")

    def release(self, uid: int) -> None:
        with self._lock:
            self._used.discard(uid)


_UIDS = _UidPool()
_CPU_COUNTER = itertools.count()


def _interpreter(config: SandboxConfig) -> tuple[str, str]:
    """(real path of the interpreter binary, its installation prefix)."""
    python = os.path.realpath(config.python or sys.executable)
    if config.python is None:
        prefix = os.path.realpath(sys.base_prefix)
    else:
        prefix = os.path.dirname(os.path.dirname(python))
    return python, prefix


def _site_packages(config: SandboxConfig) -> str:
    return config.site_packages or sysconfig.get_paths()["purelib"]


def package_entries(config: SandboxConfig) -> list[str]:
    """Names of the site-packages entries bound at /sandbox/lib (those of config.packages installed)."""
    site = _site_packages(config)
    names: list[str] = []
    for pattern in config.packages:
        for path in sorted(glob.glob(os.path.join(glob.escape(site), pattern))):
            name = os.path.basename(path)
            if name not in names and not os.path.islink(path):
                names.append(name)
    return names


def _taskset_prefix(config: SandboxConfig) -> list[str]:
    allowed = sorted(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if len(allowed) <= config.cpus or taskset is None:
        return []
    start = next(_CPU_COUNTER) * config.cpus
    chosen = [allowed[(start + k) % len(allowed)] for k in range(config.cpus)]
    return [taskset, "-c", ",".join(map(str, chosen))]


def _filesystem_args(config: SandboxConfig, prefix: str) -> list[str]:
    """bwrap's filesystem: an empty read-only root with read-only binds of /usr, the interpreter's
    prefix (its site-packages hidden), the harness and the curated packages; a fresh /proc, a minimal
    /dev, and a size-capped tmpfs /tmp as the only writable place."""
    made: set[str] = {"/"}

    def parents(dest: str) -> list[str]:
        """--dir (mode 0755) for each missing ancestor of dest: bwrap run as root makes them 0700."""
        out: list[str] = []
        path = os.path.dirname(dest)
        chain = []
        while path not in made:
            chain.append(path)
            path = os.path.dirname(path)
        for path in reversed(chain):
            made.add(path)
            out += ["--perms", "0755", "--dir", path]
        return out

    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    if os.path.exists("/etc/ld.so.cache"):
        args += parents("/etc/ld.so.cache") + ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    if not (prefix == "/usr" or prefix.startswith("/usr/")):
        args += parents(prefix) + ["--ro-bind", prefix, prefix]
        # Hide the interpreter's own site-packages (-S keeps it off sys.path; this keeps it unreadable).
        for hidden in sorted(glob.glob(os.path.join(glob.escape(prefix), "lib", "python3*", "site-packages"))):
            args += ["--perms", "0555", "--size", "4096", "--tmpfs", hidden, "--remount-ro", hidden]
    args += parents(SANDBOX_HARNESS) + ["--ro-bind", str(HARNESS), SANDBOX_HARNESS]
    args += ["--perms", "0755", "--dir", SANDBOX_LIB]
    site = _site_packages(config)
    for name in package_entries(config):
        args += ["--ro-bind", os.path.join(site, name), f"{SANDBOX_LIB}/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "0555", "--size", "65536", "--tmpfs", "/dev/shm", "--remount-ro", "/dev/shm",
             "--perms", "1777", "--size", str(config.tmp_bytes), "--tmpfs", "/tmp",
             "--remount-ro", "/", "--chdir", "/tmp"]
    return args


class BwrapBackend:
    name = "bwrap"

    def unavailable_reason(self, config: SandboxConfig) -> str | None:
        if not sys.platform.startswith("linux"):
            return "the bwrap sandbox needs Linux"
        if shutil.which(config.bwrap) is None:
            return (f"bubblewrap ({config.bwrap!r}) is not installed; install it (Debian: apt-get install "
                    "bubblewrap)")
        python, prefix = _interpreter(config)
        if not os.access(python, os.X_OK):
            return f"grader interpreter {python} is missing"
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None or not os.path.exists("/usr/bin/setpriv"):
                return "setpriv (util-linux) is needed at /usr/bin/setpriv to drop root inside the sandbox"
        else:
            try:
                if int(Path("/proc/sys/user/max_user_namespaces").read_text()) == 0:
                    return "user namespaces are disabled (user.max_user_namespaces = 0)"
            except (OSError, ValueError):
                pass
        return None

    def launch(self, config: SandboxConfig) -> Launch:
        root = os.geteuid() == 0
        uid = _UIDS.acquire(config.uid, config.uid_pool_size) if root else None
        try:
            return self._launch(config, uid)
        except BaseException:
            if uid is not None:
                _UIDS.release(uid)
            raise

    def _launch(self, config: SandboxConfig, uid: int | None) -> Launch:
        python, prefix = _interpreter(config)
        bwrap = shutil.which(config.bwrap)
        root = uid is not None
        args = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                "--as-pid-1", "--die-with-parent", "--new-session", "--clearenv", "--hostname", "grader"]
        if not root:
            args += ["--unshare-user", "--uid", str(SANDBOX_UID_UNPRIVILEGED), "--gid",
                     str(SANDBOX_UID_UNPRIVILEGED), "--disable-userns", "--cap-drop", "ALL"]
        args += _filesystem_args(config, prefix)

        if root:
            args_tail = ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                         "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
        else:
            args_tail = []
        args_tail += [python, "-I", "-S", "-B", SANDBOX_HARNESS]
        argv_head = _taskset_prefix(config)

        # Last, the fds (nothing below can fail half-way and leak them).
        pass_fds: list[int] = []
        program = seccomp_program()
        if program is not None:
            read_end, write_end = os.pipe()
            os.write(write_end, program)
            os.close(write_end)
            pass_fds.append(read_end)
            args += ["--seccomp", str(read_end)]
        else:
            _warn_once(f"no seccomp filter for this architecture ({platform.machine()}): its syscall numbers "
                       "are x86_64's (policy.py); the bwrap sandbox runs without one")
        info_read, info_write = os.pipe()
        pass_fds.append(info_write)
        args += ["--info-fd", str(info_write), "--"]
        return Launch(argv=argv_head + args + args_tail, pass_fds=pass_fds, info_fd=info_read, sweep_uid=uid,
                      release=(lambda: _UIDS.release(uid)) if root else None)


class UnsafeSubprocessBackend:
    """NO isolation: the grader can read and write whatever the service can, and reach the network.
    Development only (no bubblewrap at hand); every use logs a warning."""

    name = "unsafe-subprocess"

    def unavailable_reason(self, config: SandboxConfig) -> str | None:
        python, _ = _interpreter(config)
        return None if os.access(python, os.X_OK) else f"grader interpreter {python} is missing"

    def launch(self, config: SandboxConfig) -> Launch:
        log.warning("UNSAFE python grader backend %r: grader code runs WITHOUT a sandbox, with the "
                    "service's own permissions (development only; use backend='bwrap')", self.name)
        python, _ = _interpreter(config)
        return Launch(argv=_taskset_prefix(config) + [python, "-I", "-S", "-B", str(HARNESS)])


BACKENDS: dict[str, SandboxBackend] = {
    "bwrap": BwrapBackend(),
    "unsafe-subprocess": UnsafeSubprocessBackend(),
}

_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _backend(config: SandboxConfig) -> SandboxBackend:
    try:
        return BACKENDS[config.backend]
    except KeyError:
        raise ValueError(f"unknown sandbox backend {config.backend!r}; known: {sorted(BACKENDS)}") from None

