"""Sandbox for OpenAI-style python graders: untrusted `grade(sample, item)` code, run out of process.

One call grades a whole batch in ONE sandboxed process (sandbox_harness.py inside it), with a time
limit per sample. Data crosses as JSON lines over stdin/stdout, never pickle.

Backends sit in `BACKENDS` (name -> backend):
  "bwrap"              bubblewrap (Debian's `bubblewrap`): the default, and the only safe one.
  "unsafe-subprocess"  a bare `python -I -S` child with rlimits and NO isolation: development only;
                       it logs a warning on every use.

The "bwrap" sandbox:
  - namespaces: pid, net (nothing but its own loopback: no network), ipc, uts, cgroup; the
    filesystem is an empty read-only root with read-only binds of /usr, /etc/ld.so.cache, the
    interpreter's prefix (its own site-packages hidden), the harness and a curated list of
    site-packages entries at /sandbox/lib; a fresh /proc and minimal /dev; a size-capped tmpfs /tmp is
    the only writable place.
  - non-root uid: when the service runs as root, bwrap runs without a user namespace (it needs root to
    read the interpreter under /root) and execs `setpriv` to switch to a uid of its own from a pool
    (`SandboxConfig.uid`, one uid per concurrent sandbox) with no capabilities, no supplementary
    groups and no_new_privs, before the interpreter starts. The kernel exempts only uid 0 from
    RLIMIT_NPROC, so the fork bomb limit holds. When the service is not root, bwrap makes a user
    namespace and runs the grader as uid 1000 inside it (RLIMIT_NPROC then counts per namespace).
  - empty environment: bwrap itself is started with env={} and --clearenv (otherwise
    /proc/1/environ shows the service's environment).
  - seccomp (x86_64): no ptrace/process_vm_*, mount, new namespaces, bpf, perf, keyrings, io_uring,
    kernel modules, sched_setaffinity; sockets only AF_UNIX.
  - limits as a whole (sandbox_bounds.py): memory and processes of the grader and everything it starts
    together, by a cgroup per launch (v2, or v1 memory + pids) where one can be written, else by a
    lower process cap with each process's address space scaled so the total stays under
    total_memory_bytes; the mechanism in use is logged once (sandbox_bounds.detected()).
  - limits per process: rlimits AS/CPU/NPROC/FSIZE/NOFILE/CORE set by the harness before any user code runs;
    per-sample SIGALRM inside; a per-sample and per-batch wall clock enforced from outside; CPU pinning
    with taskset; stdout read at most `max_output_bytes` per line.
  - cleanup: --unshare-pid --as-pid-1 make the harness the pid namespace's init, so when it exits
    (or is SIGKILLed from outside) the kernel kills every other process in the namespace, daemons
    included, before bwrap can reap it; --die-with-parent covers the service dying. bwrap's process
    group is then SIGKILLed and reaped before we return, and as root any process still owning the
    sandbox uid is killed too (after an abnormal end).
If the sandbox cannot be created the batch fails closed: every sample gets a
python_grader_server_error ("sandbox_unavailable"); nothing ever runs unsandboxed by fallback.
"""

from __future__ import annotations

import ast
import glob
import itertools
import json
import logging
import math
import os
import platform
import re
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from modelmill import errors

from . import sandbox_bounds

log = logging.getLogger(__name__)

RUNTIME_ERROR = "python_grader_runtime_error"
SERVER_ERROR = "python_grader_server_error"

# OpenAI's published limits for python graders (code < 256 kB, no network, 2 minutes, 2 GB of
# memory, 1 GB of disk, 2 CPU cores): the ceiling for every configurable limit below.
MAX_CODE_BYTES = 256 * 1024
MAX_WALL_SECONDS = 120.0
MAX_MEMORY_BYTES = 2 * 1024**3
MAX_TMP_BYTES = 1024**3
MAX_CPUS = 2

HARNESS = Path(__file__).with_name("sandbox_harness.py")
SANDBOX_HARNESS = "/sandbox/harness.py"
SANDBOX_LIB = "/sandbox/lib"
SANDBOX_UID_UNPRIVILEGED = 1000  # uid inside the user namespace when the service is not root
EX_SOFTWARE = 70  # sandbox_harness.EX_SOFTWARE

# site-packages entries (names or globs) offered inside the sandbox when installed: OpenAI's python
# grader packages and what they import. Everything else in the venv (torch, openai, httpx, ...) is
# not there. `importable_modules()` says which of these import in the sandbox right now. Their
# *.dist-info directories are left out on purpose (importlib.metadata does not see these packages):
# every bind mount costs bwrap ~0.3 ms, and the dist-infos doubled the start-up time.
DEFAULT_PACKAGES = (
    "numpy", "numpy.libs", "scipy", "scipy.libs", "sympy", "mpmath",
    "pandas", "pandas.libs", "dateutil", "six.py", "tzdata",
    "rapidfuzz", "rapidfuzz.libs",
    "sklearn", "scikit_learn.libs", "joblib", "threadpoolctl.py", "narwhals",
    "nltk", "regex", "click", "tqdm",
    "rouge_score", "absl",
    "deepdiff", "orderly_set", "sqlparse",
    "jsonschema", "jsonschema_specifications", "referencing", "rpds", "attr", "attrs",
    "pydantic", "pydantic_core", "annotated_types", "typing_extensions.py", "typing_inspection",
    "yaml", "_yaml",
)

# Top-level modules tried by importable_modules().
CANDIDATE_MODULES = ("numpy", "scipy", "sympy", "mpmath", "pandas", "dateutil", "rapidfuzz", "sklearn", "nltk",
                     "regex", "rouge_score", "deepdiff", "sqlparse", "jsonschema", "pydantic", "yaml")


@dataclass(frozen=True)
class SandboxConfig:
    # Backend name in BACKENDS: "bwrap" (default) or "unsafe-subprocess" (development only, NO isolation).
    backend: str = "bwrap"
    # Wall-clock seconds one grade() call may take (loading the grader module gets the same); <= 120.
    wall_seconds: float = MAX_WALL_SECONDS
    # Wall-clock seconds for the whole batch, all sandbox launches included; None = 10 s of startup plus
    # wall_seconds per sample. Samples not graded by then get a timeout error.
    batch_wall_seconds: float | None = None
    # Address-space limit (RLIMIT_AS) of each process of the grader, bytes; <= 2 GiB. Under the "rlimit"
    # bound it is lowered to (total_memory_bytes - tmp_bytes) / rlimit_processes.
    memory_bytes: int = MAX_MEMORY_BYTES
    # Memory of the grader and every process it starts, all together (tmpfs /tmp included), bytes;
    # <= 2 GiB (OpenAI's limit is for the grader as a whole). See sandbox_bounds.py.
    total_memory_bytes: int = MAX_MEMORY_BYTES
    # How that total is enforced (MODELMILL_SANDBOX_BOUND): "auto" = a cgroup where one can be written,
    # else "rlimit"; "cgroup" = a cgroup or the sandbox is unavailable; "rlimit" = never a cgroup.
    bound: str = field(default_factory=lambda: os.environ.get("MODELMILL_SANDBOX_BOUND") or "auto")
    # A delegated cgroup v2 directory for the sandboxes' cgroups (MODELMILL_SANDBOX_CGROUP); None = find one.
    cgroup_parent: str | None = field(default_factory=lambda: os.environ.get("MODELMILL_SANDBOX_CGROUP") or None)
    # Under the "rlimit" bound (no cgroup), the most processes plus threads the grader may have.
    rlimit_processes: int = 4
    # CPU cores the sandbox is pinned to (taskset; sched_setaffinity is blocked inside); <= 2.
    cpus: int = 1
    # Size of the only writable place, the tmpfs at /tmp (also the largest file: RLIMIT_FSIZE); <= 1 GiB.
    tmp_bytes: int = 64 * 1024**2
    # Largest grader source, bytes of UTF-8; <= 256 kB.
    max_code_bytes: int = MAX_CODE_BYTES
    # Largest result line read from the sandbox for one sample, bytes; stdout is read no further.
    max_output_bytes: int = 64 * 1024
    # Characters of error text (message and traceback) kept per sample.
    max_error_chars: int = 2000
    # Processes plus threads the grader may have at once, all together (RLIMIT_NPROC of its uid, and the
    # launch cgroup's pids.max where there is one; the "rlimit" bound lowers it to rlimit_processes).
    max_processes: int = 32
    # Open file descriptors per process (RLIMIT_NOFILE).
    max_open_files: int = 256
    # Service running as root: first uid (and gid) of the pool graders run as, one uid per concurrent
    # sandbox. Pick a range no real account uses: leftover processes of these uids are killed.
    uid: int = 2_000_000_000
    # Number of uids in that pool (the most sandboxes that can run at once as root).
    uid_pool_size: int = 1024
    # bubblewrap executable, looked up on PATH when not absolute.
    bwrap: str = "bwrap"
    # Interpreter run in the sandbox; None = the running one (the venv's), resolved to its real file.
    python: str | None = None
    # site-packages that `packages` come from; None = the running interpreter's (the venv's).
    site_packages: str | None = None
    # site-packages entries (names or globs) bound read-only at /sandbox/lib; missing ones are skipped.
    packages: tuple[str, ...] = DEFAULT_PACKAGES

    def __post_init__(self):
        checks = [
            (0 < self.wall_seconds <= MAX_WALL_SECONDS, f"wall_seconds must be in (0, {MAX_WALL_SECONDS:g}]"),
            (self.batch_wall_seconds is None or self.batch_wall_seconds > 0, "batch_wall_seconds must be > 0"),
            (64 * 1024**2 <= self.memory_bytes <= MAX_MEMORY_BYTES,
             f"memory_bytes must be in [64 MiB, {MAX_MEMORY_BYTES}]"),
            (128 * 1024**2 <= self.total_memory_bytes <= MAX_MEMORY_BYTES,
             f"total_memory_bytes must be in [128 MiB, {MAX_MEMORY_BYTES}]"),
            (self.bound in sandbox_bounds.BOUND_CHOICES, f"bound must be one of {sandbox_bounds.BOUND_CHOICES}"),
            (2 <= self.rlimit_processes <= self.max_processes, "rlimit_processes must be in [2, max_processes]"),
            ((self.total_memory_bytes - self.tmp_bytes) // max(2, self.rlimit_processes) >= 64 * 1024**2,
             "rlimit_processes and tmp_bytes leave under 64 MiB per process of total_memory_bytes"),
            (1 <= self.cpus <= MAX_CPUS, f"cpus must be in [1, {MAX_CPUS}]"),
            (1024**2 <= self.tmp_bytes <= MAX_TMP_BYTES, f"tmp_bytes must be in [1 MiB, {MAX_TMP_BYTES}]"),
            (0 < self.max_code_bytes <= MAX_CODE_BYTES, f"max_code_bytes must be in (0, {MAX_CODE_BYTES}]"),
            (1024 <= self.max_output_bytes <= 16 * 1024**2, "max_output_bytes must be in [1 KiB, 16 MiB]"),
            (100 <= self.max_error_chars <= self.max_output_bytes // 2, "max_error_chars must be in "
             "[100, max_output_bytes / 2]"),
            (4 <= self.max_processes <= 4096, "max_processes must be in [4, 4096]"),
            (16 <= self.max_open_files <= 65536, "max_open_files must be in [16, 65536]"),
            (0 < self.uid and self.uid + self.uid_pool_size < 2**32 - 2 and self.uid_pool_size >= 1,
             "uid .. uid + uid_pool_size must be non-root 32-bit uids"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"SandboxConfig: {message}")

    def batch_deadline_seconds(self, n: int) -> float:
        return self.batch_wall_seconds if self.batch_wall_seconds is not None else 10.0 + self.wall_seconds * n


@dataclass(frozen=True)
class SandboxOutcome:
    # The grade, a finite float; None when error is set.
    score: float | None
    # None, RUNTIME_ERROR ("python_grader_runtime_error": the grader's fault: exception, timeout,
    # non-finite or non-number score, output too large) or SERVER_ERROR ("python_grader_server_error":
    # sandbox could not start, was killed by the kernel, the harness crashed).
    error: str | None = None
    # RUNTIME_ERROR: what went wrong, for python_grader_runtime_error_details. SERVER_ERROR: a type
    # string for python_grader_server_error_type ("sandbox_unavailable", "memory_limit",
    # "harness_crashed", "sandbox_busy").
    details: str | None = None
    # SERVER_ERROR: a longer human-readable message (bwrap's stderr, the signal); for logs.
    message: str | None = None
    # Seconds grade() ran for this sample (0.0 when it never ran).
    execution_time: float = 0.0

    def errors(self) -> dict:
        """The python_grader_* keys of OpenAI's RunGraderResponse metadata.errors."""
        return {
            "python_grader_runtime_error": self.error == RUNTIME_ERROR,
            "python_grader_runtime_error_details": self.details if self.error == RUNTIME_ERROR else None,
            "python_grader_server_error": self.error == SERVER_ERROR,
            "python_grader_server_error_type": self.details if self.error == SERVER_ERROR else None,
        }


# NUL and (necessarily unpaired) surrogate code points: a grader's error text may hold them (raise
# ValueError("\ud800")), and no UTF-8 JSON response or database text column can.
_UNSAFE_TEXT = re.compile("[\x00\ud800-\udfff]")


def _runtime(details: str, t: float = 0.0) -> SandboxOutcome:
    return SandboxOutcome(score=None, error=RUNTIME_ERROR, details=_UNSAFE_TEXT.sub("\ufffd", details),
                          execution_time=t)


def _server(kind: str, message: str) -> SandboxOutcome:
    return SandboxOutcome(score=None, error=SERVER_ERROR, details=kind, message=message)


# ---------------------------------------------------------------------------------------------
# Source checks


def check_source(source: str, max_code_bytes: int = MAX_CODE_BYTES) -> None:
    """Validate a python grader's source for the API: at most max_code_bytes of UTF-8, compiles, and
    defines grade(sample, item) at module level. Raises errors.InvalidRequestError(param="grader.source")."""
    def bad(message: str) -> errors.InvalidRequestError:
        return errors.InvalidRequestError(message, param="grader.source", code="invalid_value")

    if not isinstance(source, str):
        raise bad("grader.source must be a string of Python code")
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > max_code_bytes:
        raise bad(f"grader.source is {size} bytes; the limit is {max_code_bytes} bytes")
    try:
        tree = ast.parse(source, filename="<grader>")
        compile(tree, "<grader>", "exec")
    except SyntaxError as e:
        raise bad(f"grader.source does not compile: {e.msg} (line {e.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        raise bad(f"grader.source does not compile: {e}") from None
    grade = _module_level_grade(tree)
    if grade is None:
        raise bad("grader.source must define a function grade(sample, item) at module level")
    if isinstance(grade, (ast.FunctionDef, ast.AsyncFunctionDef)):
        if isinstance(grade, ast.AsyncFunctionDef):
            raise bad("grade must be a plain function, not async def")
        args = grade.args
        positional = len(args.posonlyargs) + len(args.args)
        required_kwonly = [a for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is None]
        if (positional < 2 and args.vararg is None) or required_kwonly or \
                positional - len(args.defaults) > 2:
            raise bad("grade must accept two positional arguments: grade(sample, item)")


def _module_level_grade(tree: ast.Module):
    """The last module-level statement binding the name `grade` (def, assignment, import), or None."""
    found = None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == "grade":
            found = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if any(isinstance(n, ast.Name) and n.id == "grade" for n in ast.walk(target)):
                    found = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if (alias.asname or alias.name.split(".")[0]) == "grade":
                    found = node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            inner = _module_level_grade(ast.Module(body=[n for n in ast.iter_child_nodes(node)
                                                         if isinstance(n, ast.stmt)], type_ignores=[]))
            if inner is not None:
                found = inner
    return found


# ---------------------------------------------------------------------------------------------
# Seccomp (x86_64): a small classic-BPF deny list, handed to bwrap with --seccomp.

_X86_64_DENY = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438,
    "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161, "mount_setattr": 442, "move_mount": 429,
    "open_tree": 428, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "unshare": 272, "setns": 308, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
    "keyctl": 250, "add_key": 248, "request_key": 249, "kexec_load": 246, "kexec_file_load": 320,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167,
    "swapoff": 168, "syslog": 103, "acct": 163, "settimeofday": 164, "clock_settime": 227, "adjtimex": 159,
    "clock_adjtime": 305, "personality": 135, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_by_handle_at": 304, "name_to_handle_at": 303, "sched_setaffinity": 203,
    "quotactl": 179, "lookup_dcookie": 212, "fanotify_init": 300, "iopl": 172, "ioperm": 173,
    "vhangup": 153, "uselib": 134, "migrate_pages": 256, "move_pages": 279,
}
_NR_SOCKET, _NR_CLONE, _NR_CLONE3 = 41, 56, 435
_AUDIT_ARCH_X86_64 = 0xC000003E
_CLONE_NAMESPACES = 0x00020000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x02000000
_RET_ALLOW, _RET_KILL = 0x7FFF0000, 0x80000000
_RET_EPERM, _RET_EACCES, _RET_ENOSYS = 0x00050000 | 1, 0x00050000 | 13, 0x00050000 | 38


def seccomp_program() -> bytes | None:
    """The BPF filter as `struct sock_filter[]` bytes, or None on an architecture it does not know."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    code: list[tuple] = [
        (ld, None, None, 4),                          # arch
        (jeq, 0, "kill", _AUDIT_ARCH_X86_64),
        (ld, None, None, 0),                          # syscall number
        (jge, "eperm", 0, 0x40000000),                # x32 ABI
        *[(jeq, "eperm", 0, nr) for nr in sorted(_X86_64_DENY.values())],
        (jeq, "socket", 0, _NR_SOCKET),
        (jeq, "clone", 0, _NR_CLONE),
        (jeq, "enosys", 0, _NR_CLONE3),               # glibc falls back to clone, which we can inspect
        ("allow",),
        ("label", "socket"), (ld, None, None, 16), (jeq, "allow", "eacces", 1),   # AF_UNIX only
        ("label", "clone"), (ld, None, None, 16), (jset, "eperm", "allow", _CLONE_NAMESPACES),
        ("label", "allow"), (ret, None, None, _RET_ALLOW),
        ("label", "eperm"), (ret, None, None, _RET_EPERM),
        ("label", "eacces"), (ret, None, None, _RET_EACCES),
        ("label", "enosys"), (ret, None, None, _RET_ENOSYS),
        ("label", "kill"), (ret, None, None, _RET_KILL),
    ]
    code = [(ret, None, None, _RET_ALLOW) if op == ("allow",) else op for op in code]
    labels, pc = {}, 0
    for op in code:
        if op[0] == "label":
            labels[op[1]] = pc
        else:
            pc += 1
    out, pc = bytearray(), 0
    for op in code:
        if op[0] == "label":
            continue
        opcode, jt, jf, k = op

        def rel(target):
            if target is None or isinstance(target, int):
                return target or 0
            offset = labels[target] - pc - 1
            assert 0 <= offset < 256
            return offset

        out += struct.pack("<HBBI", opcode, rel(jt), rel(jf), k)
        pc += 1
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Backends


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

        args += ["--ro-bind", "/usr", "/usr"]
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
            _warn_once("no seccomp filter for this architecture; the bwrap sandbox runs without one")
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


# ---------------------------------------------------------------------------------------------
# Availability


_probe_cache: dict[tuple, str | None] = {}
_probe_lock = threading.Lock()


def unavailable_reason(config: SandboxConfig | None = None) -> str | None:
    """None when the configured backend can run graders here (checked once with a real sandbox
    launch, then cached), else why not."""
    config = config or SandboxConfig()
    backend = _backend(config)
    key = (config.backend, config.bwrap, config.python, os.geteuid(), config.bound, config.cgroup_parent)
    with _probe_lock:
        if key in _probe_cache:
            return _probe_cache[key]
        reason = backend.unavailable_reason(config) or sandbox_bounds.unavailable_reason(config)
        if reason is None:
            probe = SandboxConfig(**{**config.__dict__, "wall_seconds": min(config.wall_seconds, 30.0),
                                     "batch_wall_seconds": 60.0})
            outcome = _run(backend, "def grade(sample, item):\n    return 1\n", [{}], [{}], probe)[0]
            if outcome.score != 1.0:
                reason = outcome.message or outcome.details or "the sandbox probe failed"
        _probe_cache[key] = reason
        return reason


def available(config: SandboxConfig | None = None) -> bool:
    """Whether python graders can run here with this config (default: bwrap)."""
    return unavailable_reason(config) is None


def ensure_available(config: SandboxConfig | None = None) -> None:
    """Raise errors.ModelMillError (server_error, code "sandbox_unavailable") when graders cannot run."""
    reason = unavailable_reason(config)
    if reason is not None:
        raise errors.ModelMillError(f"python grader sandbox unavailable: {reason}", code="sandbox_unavailable")


def importable_modules(config: SandboxConfig | None = None) -> dict[str, bool]:
    """Which of CANDIDATE_MODULES import inside the sandbox (the stdlib always does)."""
    config = config or SandboxConfig()
    source = ("import importlib\n"
              "def grade(sample, item):\n"
              "    try:\n"
              "        importlib.import_module(sample['m'])\n"
              "        return 1\n"
              "    except BaseException:\n"
              "        return 0\n")
    samples = [{"m": m} for m in CANDIDATE_MODULES]
    outcomes = run_python_grader(source, samples, [{}] * len(samples), config)
    return {m: o.score == 1.0 for m, o in zip(CANDIDATE_MODULES, outcomes)}


# ---------------------------------------------------------------------------------------------
# Running


def run_python_grader(source: str, samples: list[dict], items: list[dict],
                      config: SandboxConfig | None = None) -> list[SandboxOutcome]:
    """Grade samples[i] against items[i] with the grader's `grade(sample, item)`, all in one sandboxed
    process (a new one only after a sample killed it). Returns one SandboxOutcome per sample; the
    grader's own failures are RUNTIME_ERROR outcomes, the sandbox's SERVER_ERROR ones. Raises only for
    caller mistakes (lengths differ, samples not JSON-serialisable, unknown backend)."""
    config = config or SandboxConfig()
    if len(samples) != len(items):
        raise ValueError(f"{len(samples)} samples but {len(items)} items")
    backend = _backend(config)
    if not samples:
        return []
    if not isinstance(source, str):
        return [_runtime("grader source must be a string")] * len(samples)
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > config.max_code_bytes:
        return [_runtime(f"grader source is {size} bytes; the limit is {config.max_code_bytes} bytes")] * len(samples)
    reason = backend.unavailable_reason(config) or sandbox_bounds.unavailable_reason(config)
    if reason is not None:
        log.error("python grader sandbox unavailable: %s", reason)
        return [_server("sandbox_unavailable", reason)] * len(samples)
    return _run(backend, source, samples, items, config)


_STARTUP_SECONDS = 10.0  # bwrap + interpreter start, before the harness says "started"
_GRACE_SECONDS = 1.0  # past a sample's limit before the outside kills what SIGALRM did not stop


def _run(backend: SandboxBackend, source: str, samples: list, items: list,
         config: SandboxConfig) -> list[SandboxOutcome]:
    n = len(samples)
    try:
        sample_json = [json.dumps(s, separators=(",", ":")) for s in samples]
        item_json = [json.dumps(i, separators=(",", ":")) for i in items]
    except (TypeError, ValueError) as e:
        raise ValueError(f"samples and items must be JSON-serialisable: {e}") from None
    results: list[SandboxOutcome | None] = [None] * n
    batch_deadline = time.monotonic() + config.batch_deadline_seconds(n)
    first = 0
    while first < n:
        if time.monotonic() >= batch_deadline:
            for k in range(first, n):
                results[k] = _runtime("timeout: the batch's time limit ran out before this sample was graded")
            break
        first = _launch_once(backend, source, sample_json, item_json, first, config, batch_deadline, results)
    return results  # type: ignore[return-value]


def _request_bytes(source: str, sample_json: list[str], item_json: list[str], first: int,
                   config: SandboxConfig, batch_deadline: float, bounds: sandbox_bounds.Plan) -> bytes:
    remaining = len(sample_json) - first
    budget = max(1.0, min(batch_deadline - time.monotonic(), config.wall_seconds * (remaining + 1)))
    limits = {"as": bounds.rlimit_as, "cpu": math.ceil(budget * config.cpus) + 1,
              "nproc": bounds.rlimit_nproc, "fsize": config.tmp_bytes, "nofile": config.max_open_files,
              "core": 0, "msgqueue": 0}
    head = json.dumps({"source": source, "first": first, "timeout": config.wall_seconds, "limits": limits,
                       "path": [SANDBOX_LIB] if config.backend == "bwrap" else [],
                       "max_details": config.max_error_chars})
    body = ('{"samples":[' + ",".join(sample_json[first:]) + '],"items":[' + ",".join(item_json[first:]) + "],"
            + head[1:])
    return body.encode("utf-8", "surrogatepass")


def _launch_once(backend: SandboxBackend, source: str, sample_json: list[str], item_json: list[str], first: int,
                 config: SandboxConfig, batch_deadline: float, results: list) -> int:
    """Run one harness process over samples[first:]; fill results; return the next index to grade."""
    n = len(sample_json)
    bounds = sandbox_bounds.plan(config)
    payload = _request_bytes(source, sample_json, item_json, first, config, batch_deadline, bounds)
    try:
        launch = backend.launch(config)
    except SandboxBusy as e:
        for k in range(first, n):
            results[k] = _server("sandbox_busy", str(e))
        return n
    proc = cgroup = None
    run = _Run(config, first)
    try:
        try:
            argv = launch.argv
            if bounds.mechanism != "rlimit":
                cgroup = sandbox_bounds.LaunchCgroup(bounds)
                argv = cgroup.wrap(argv)
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, env={}, cwd="/", close_fds=True,
                                    pass_fds=launch.pass_fds, start_new_session=True)
        except OSError as e:
            for k in range(first, n):
                results[k] = _server("sandbox_unavailable", f"cannot start the sandbox: {e}")
            return n
        finally:
            for fd in launch.pass_fds:
                os.close(fd)
        run.drive(proc, launch, payload, batch_deadline)
    finally:
        if proc is not None:
            _terminate(proc, run.ns_init_pid, finished=run.done or run.killed_for is None)
        if launch.info_fd is not None:
            try:
                os.close(launch.info_fd)
            except OSError:
                pass
        # A harness that finished normally was the pid namespace's init: the kernel killed everything
        # else in the namespace before bwrap could reap it. Otherwise make sure by uid.
        if launch.sweep_uid is not None and (proc is None or not run.done or run.killed_for is not None):
            kill_processes_of_uid(launch.sweep_uid)
        if cgroup is not None:
            killed = cgroup.oom_killed()
            if killed:
                log.warning("python grader sandbox: the OOM killer ended %d process(es) at the total memory limit "
                            "(%d MiB)", killed, bounds.total_memory_bytes // 1024**2)
            cgroup.destroy()  # after the sweep: nothing of this launch is left to keep it busy
        if launch.release is not None:
            launch.release()
    for index, outcome in run.outcomes.items():
        results[index] = outcome
    return run.conclude(proc, results, n)


class _Run:
    """Reads one harness process's result stream and watches its clocks."""

    def __init__(self, config: SandboxConfig, first: int):
        self.config = config
        self.first = first
        self.expected = first  # index of the next result line
        self.outcomes: dict[int, SandboxOutcome] = {}
        self.started = self.ready = self.done = False
        self.load_error: str | None = None
        self.killed_for: str | None = None  # why we killed it: "timeout", "batch_timeout", "output", "protocol"
        self.protocol_problem: str | None = None
        self.stderr_tail = b""
        self.ns_init_pid: int | None = None

    def drive(self, proc: subprocess.Popen, launch: Launch, payload: bytes, batch_deadline: float) -> None:
        config = self.config
        sel = selectors.DefaultSelector()
        os.set_blocking(proc.stdin.fileno(), False)
        sel.register(proc.stdin, selectors.EVENT_WRITE, "stdin")
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        info = b""
        if launch.info_fd is not None:
            sel.register(launch.info_fd, selectors.EVENT_READ, "info")
        view, sent = memoryview(payload), 0
        buf = bytearray()
        t0 = last = time.monotonic()
        open_streams = 2
        try:
            while open_streams and not self.done and self.killed_for is None:
                now = time.monotonic()
                if not self.started:
                    deadline = t0 + _STARTUP_SECONDS
                else:
                    deadline = last + config.wall_seconds + _GRACE_SECONDS
                if now >= batch_deadline:
                    self.killed_for = "batch_timeout"
                    break
                if now >= deadline:
                    self.killed_for = "timeout" if self.started else "startup_timeout"
                    break
                for key, _ in sel.select(timeout=min(deadline, batch_deadline) - now):
                    what = key.data
                    if what == "stdin":
                        try:
                            sent += os.write(proc.stdin.fileno(), view[sent:sent + 65536])
                        except (BrokenPipeError, OSError):
                            sent = len(payload)
                        if sent >= len(payload):
                            sel.unregister(proc.stdin)
                            proc.stdin.close()
                    elif what == "info":
                        chunk = _read(launch.info_fd)
                        if chunk is None:
                            continue
                        if chunk:
                            info += chunk[:4096]
                            self._parse_info(info)
                        else:
                            sel.unregister(launch.info_fd)
                    elif what == "stderr":
                        chunk = _read(proc.stderr.fileno())
                        if chunk is None:
                            continue
                        if chunk:
                            self.stderr_tail = (self.stderr_tail + chunk)[-8192:]
                        else:
                            sel.unregister(proc.stderr)
                            open_streams -= 1
                    else:
                        chunk = _read(proc.stdout.fileno())
                        if chunk is None:
                            continue
                        if not chunk:
                            sel.unregister(proc.stdout)
                            open_streams -= 1
                            continue
                        buf += chunk
                        if b"\n" in chunk:
                            *lines, rest = bytes(buf).split(b"\n")
                            buf = bytearray(rest)
                            for line in lines:
                                if len(line) > config.max_output_bytes:
                                    self.killed_for = "output"
                                else:
                                    self._line(line)
                                if self.done or self.killed_for is not None:
                                    break
                            last = time.monotonic()
                        if len(buf) > config.max_output_bytes and self.killed_for is None and not self.done:
                            self.killed_for = "output"
        finally:
            sel.close()
            if not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

    def _parse_info(self, info: bytes) -> None:
        try:
            pid = json.loads(info.decode()).get("child-pid")
        except (ValueError, UnicodeDecodeError, AttributeError):
            return
        if isinstance(pid, int) and pid > 1:
            self.ns_init_pid = pid

    def _line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            return self._violation("the grader wrote something that is not a result to the result channel")
        if not isinstance(msg, dict):
            return self._violation("the grader wrote something that is not a result to the result channel")
        if not self.started:
            if msg == {"started": True}:
                self.started = True
                return None
            return self._violation("unexpected output before the harness started")
        if not self.ready:
            if msg == {"ready": True}:
                self.ready = True
            elif set(msg) == {"load_error"} and isinstance(msg["load_error"], str):
                self.load_error = _UNSAFE_TEXT.sub("\ufffd", msg["load_error"][:self.config.max_error_chars])
                self.done = True
            else:
                self._violation("unexpected output while loading the grader")
            return None
        if msg == {"done": True}:
            self.done = True
            return None
        t = msg.get("t")
        valid_t = isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
        t = float(t) if valid_t else 0.0
        if msg.get("i") != self.expected or isinstance(msg.get("i"), bool):
            return self._violation("the grader wrote an out-of-order result to the result channel")
        keys = set(msg) - {"i", "t"}
        if keys == {"score"}:
            score = msg["score"]
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                return self._violation("the grader wrote an invalid score to the result channel")
            outcome = SandboxOutcome(score=float(score), execution_time=t)
        elif keys == {"error"} and isinstance(msg["error"], str):
            outcome = _runtime(msg["error"][:self.config.max_error_chars], t)
        else:
            return self._violation("the grader wrote something that is not a result to the result channel")
        self.outcomes[self.expected] = outcome
        self.expected += 1
        return None

    def _violation(self, problem: str) -> None:
        self.protocol_problem = problem
        self.killed_for = "protocol"

    def conclude(self, proc: subprocess.Popen | None, results: list, n: int) -> int:
        """Classify how the process ended; fill results for the sample it stopped on (or for all the
        rest when it never got going); return where the next launch starts."""
        k = self.expected
        if k >= n:
            return n
        rc = proc.returncode if proc is not None else None
        stderr = self.stderr_tail.decode("utf-8", "replace").strip()
        if self.load_error is not None:
            for j in range(k, n):
                results[j] = _runtime(self.load_error)
            return n
        if self.killed_for == "batch_timeout":
            for j in range(k, n):
                results[j] = _runtime("timeout: the batch's time limit ran out before this sample was graded")
            return n
        if not self.started:
            message = "the sandbox did not start"
            if self.killed_for == "startup_timeout":
                message += f" within {_STARTUP_SECONDS:g}s"
            elif rc is not None:
                message += f" (exit status {rc})"
            if stderr:
                message += ": " + stderr[-2000:]
            log.error("python grader sandbox failed: %s", message)
            for j in range(k, n):
                results[j] = _server("sandbox_unavailable", message)
            return n
        limit = f"{self.config.wall_seconds:g}s"
        if not self.ready:  # died or hung while loading the module: the grader's fault, for every sample
            if self.killed_for == "timeout":
                problem = f"timeout: loading the grader took longer than {limit}"
            elif self.killed_for == "output":
                problem = f"the grader wrote more than {self.config.max_output_bytes} bytes of output"
            elif self.killed_for == "protocol":
                problem = self.protocol_problem or "invalid output"
            else:
                outcome = self._death(rc, stderr, "loading the grader")
                for j in range(k, n):
                    results[j] = outcome
                return n
            for j in range(k, n):
                results[j] = _runtime(problem)
            return n
        if self.killed_for == "timeout":
            results[k] = _runtime(f"timeout: grade() took longer than {limit}", float(self.config.wall_seconds))
        elif self.killed_for == "output":
            results[k] = _runtime(f"output too large: the grader wrote more than {self.config.max_output_bytes} "
                                  "bytes on the result channel")
        elif self.killed_for == "protocol":
            results[k] = _runtime(self.protocol_problem or "invalid output")
        else:
            results[k] = self._death(rc, stderr, "grade()")
        return k + 1

    def _death(self, rc: int | None, stderr: str, during: str) -> SandboxOutcome:
        """Classify a process that ended on its own without finishing."""
        # bwrap returns 128 + signal for a child killed by a signal; a bare child has rc = -signal.
        sig = -rc if rc is not None and rc < 0 else (rc - 128 if rc is not None and 128 < rc < 160 else None)
        if sig == signal.SIGXCPU:
            return _runtime(f"CPU time limit exceeded during {during}")
        if sig == signal.SIGKILL:
            message = f"the grader process was killed (SIGKILL) during {during}: out of memory, or the CPU limit"
            log.warning("python grader: %s", message)
            return _server("memory_limit", message)
        if sig is not None:
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            message = f"the grader process died of {name} during {during}"
            log.warning("python grader: %s; stderr: %s", message, stderr[-1000:])
            return _server("harness_crashed", message)
        if rc == EX_SOFTWARE:
            message = "the sandbox harness failed: " + stderr[-2000:]
            log.error("python grader: %s", message)
            return _server("harness_crashed", message)
        return _runtime(f"the grader process exited (status {rc}) during {during}")


def _read(fd: int) -> bytes | None:
    """Up to 64 kB from a readable fd; b"" at EOF (or on error), None when nothing is there after all."""
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return None
    except OSError:
        return b""


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


def processes_of_uid(uid: int) -> list[int]:
    """Pids of live (non-zombie) processes whose real, effective, saved or fs uid is uid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        uids = state = None
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uids = line.split()[1:]
            elif line.startswith("State:"):
                state = line.split()[1:2]
        if uids and str(uid) in uids and state != ["Z"]:
            found.append(int(entry))
    return found


def kill_processes_of_uid(uid: int, attempts: int = 100) -> None:
    """SIGKILL every process of a sandbox pool uid until none is left (as root only)."""
    for _ in range(attempts):
        pids = processes_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)
    log.error("python grader sandbox: processes of uid %d survive SIGKILL", uid)
