"""The python-grader sandbox's configuration and result shapes: SandboxConfig (every limit, capped
at OpenAI's published ones), SandboxOutcome (one sample's grade or classified error), and the
fixed paths and package lists of the sandbox's filesystem."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import bounds

RUNTIME_ERROR = "python_grader_runtime_error"
SERVER_ERROR = "python_grader_server_error"

# OpenAI's published limits for python graders (code < 256 kB, no network, 2 minutes, 2 GB of
# memory, 1 GB of disk, 2 CPU cores): the ceiling for every configurable limit below.
MAX_CODE_BYTES = 256 * 1024
MAX_WALL_SECONDS = 120.0
MAX_MEMORY_BYTES = 2 * 1024**3
MAX_TMP_BYTES = 1024**3
MAX_CPUS = 2


# The harness runs by path (`python -I -S -B harness.py`), never imported: this file is bound
# read-only into the sandbox at SANDBOX_HARNESS (bwrap) or run where it lies (unsafe-subprocess).
HARNESS = Path(__file__).with_name("harness.py")
SANDBOX_HARNESS = "/sandbox/harness.py"
SANDBOX_LIB = "/sandbox/lib"
SANDBOX_UID_UNPRIVILEGED = 1000  # uid inside the user namespace when the service is not root

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
    # <= 2 GiB (OpenAI's limit is for the grader as a whole). See bounds.py.
    total_memory_bytes: int = MAX_MEMORY_BYTES
    # How that total is enforced: "auto" = a cgroup where one can be written, else "rlimit"; "cgroup" = a
    # cgroup or the sandbox is unavailable; "rlimit" = never a cgroup. The service passes its
    # Settings.sandbox_bound (MODELMILL_SANDBOX_BOUND) here.
    bound: str = "auto"
    # A delegated cgroup v2 directory for the sandboxes' cgroups; None = find one. The service passes its
    # Settings.sandbox_cgroup (MODELMILL_SANDBOX_CGROUP) here.
    cgroup_parent: str | None = None
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
    # What the harness's function returns per sample: "score" (a grader: a finite number, SandboxOutcome.score)
    # or "json" (an agentic RFT tool, ml/environments.py: any JSON value, as text in SandboxOutcome.value).
    returns: str = "score"

    def __post_init__(self):
        checks = [
            (0 < self.wall_seconds <= MAX_WALL_SECONDS, f"wall_seconds must be in (0, {MAX_WALL_SECONDS:g}]"),
            (self.batch_wall_seconds is None or self.batch_wall_seconds > 0, "batch_wall_seconds must be > 0"),
            (64 * 1024**2 <= self.memory_bytes <= MAX_MEMORY_BYTES,
             f"memory_bytes must be in [64 MiB, {MAX_MEMORY_BYTES}]"),
            (128 * 1024**2 <= self.total_memory_bytes <= MAX_MEMORY_BYTES,
             f"total_memory_bytes must be in [128 MiB, {MAX_MEMORY_BYTES}]"),
            (self.bound in bounds.BOUND_CHOICES, f"bound must be one of {bounds.BOUND_CHOICES}"),
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
            (self.returns in ("score", "json"), "returns must be 'score' or 'json'"),
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
    # SandboxConfig.returns "json": the JSON text the function returned (score is then None); else None.
    value: str | None = None

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
