"""Sandbox for OpenAI-style python graders: untrusted `grade(sample, item)` code, run out of process.

One call grades a whole batch in ONE sandboxed process (harness.py inside it), with a time
limit per sample. Data crosses as JSON lines over stdin/stdout, never pickle.

The modules, in the order a batch meets them:
  config.py     SandboxConfig (every limit, capped at OpenAI's), SandboxOutcome, fixed paths
  source.py     check_source(): the API's checks on a grader's source before anything runs
  run.py        run_python_grader() and the availability checks (available, ensure_available, ...)
  backends.py   BACKENDS: how one harness process is started ("bwrap", or "unsafe-subprocess")
  policy.py     the seccomp filter and the per-process rlimits (and why seccomp is hand-written)
  bounds.py     memory and processes bounded as a whole: a cgroup per launch, or scaled rlimits
  stream.py     one harness process watched from outside: its result lines, clocks and end
  processes.py  nothing of a launch survives it: kill, reap, sweep the pool uid
  harness.py    runs INSIDE the sandbox, by path; stdlib only

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
  - seccomp (x86_64; policy.py): no ptrace/process_vm_*, mount, new namespaces, bpf, perf, keyrings, io_uring,
    kernel modules, sched_setaffinity; sockets only AF_UNIX.
  - limits as a whole (bounds.py): memory and processes of the grader and everything it starts
    together, by a cgroup per launch (v2, or v1 memory + pids) where one can be written, else by a
    lower process cap with each process's address space scaled so the total stays under
    total_memory_bytes; the mechanism in use is logged once (bounds.detected()).
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

from . import bounds
from .backends import BACKENDS, Launch, SandboxBackend, SandboxBusy, package_entries
from .config import (CANDIDATE_MODULES, DEFAULT_PACKAGES, HARNESS, MAX_CODE_BYTES, MAX_CPUS, MAX_MEMORY_BYTES,
                     MAX_TMP_BYTES, MAX_WALL_SECONDS, RUNTIME_ERROR, SANDBOX_HARNESS, SANDBOX_LIB, SERVER_ERROR,
                     SandboxConfig, SandboxOutcome)
from .policy import seccomp_program
from .processes import kill_processes_of_uid, processes_of_uid
from .run import available, ensure_available, importable_modules, run_python_grader, unavailable_reason
from .source import check_source

__all__ = [
    "BACKENDS", "CANDIDATE_MODULES", "DEFAULT_PACKAGES", "HARNESS", "Launch", "MAX_CODE_BYTES", "MAX_CPUS",
    "MAX_MEMORY_BYTES", "MAX_TMP_BYTES", "MAX_WALL_SECONDS", "RUNTIME_ERROR", "SANDBOX_HARNESS", "SANDBOX_LIB",
    "SERVER_ERROR", "SandboxBackend", "SandboxBusy", "SandboxConfig", "SandboxOutcome", "available", "bounds",
    "check_source", "ensure_available", "importable_modules", "kill_processes_of_uid", "package_entries",
    "processes_of_uid", "run_python_grader", "seccomp_program", "unavailable_reason",
]
