"""Running a batch: run_python_grader() grades every sample in one sandboxed harness process (a new
one only after a sample killed it), under a per-sample and a per-batch wall clock; the
availability checks launch a real sandbox once and cache the answer."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time

from modelmill import errors

from . import bounds
from .backends import SandboxBackend, SandboxBusy, _backend
from .config import CANDIDATE_MODULES, SANDBOX_LIB, SandboxConfig, SandboxOutcome, _runtime, _server
from .policy import rlimits
from .processes import _terminate, kill_processes_of_uid
from .stream import _Run

log = logging.getLogger(__name__)

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
        reason = backend.unavailable_reason(config) or bounds.unavailable_reason(config)
        if reason is None:
            probe = SandboxConfig(**{**config.__dict__, "wall_seconds": min(config.wall_seconds, 30.0),
                                     "batch_wall_seconds": 60.0, "returns": "score"})
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
    reason = backend.unavailable_reason(config) or bounds.unavailable_reason(config)
    if reason is not None:
        log.error("python grader sandbox unavailable: %s", reason)
        return [_server("sandbox_unavailable", reason)] * len(samples)
    return _run(backend, source, samples, items, config)


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
                   config: SandboxConfig, batch_deadline: float, plan: bounds.Plan) -> bytes:
    """The harness's request (its protocol is in harness.py) for samples[first:]."""
    remaining = len(sample_json) - first
    budget = max(1.0, min(batch_deadline - time.monotonic(), config.wall_seconds * (remaining + 1)))
    limits = rlimits(config, plan, budget)
    head = json.dumps({"source": source, "first": first, "timeout": config.wall_seconds, "limits": limits,
                       "path": [SANDBOX_LIB] if config.backend == "bwrap" else [],
                       "max_details": config.max_error_chars, "returns": config.returns})
    body = ('{"samples":[' + ",".join(sample_json[first:]) + '],"items":[' + ",".join(item_json[first:]) + "],"
            + head[1:])
    return body.encode("utf-8", "surrogatepass")


def _launch_once(backend: SandboxBackend, source: str, sample_json: list[str], item_json: list[str], first: int,
                 config: SandboxConfig, batch_deadline: float, results: list) -> int:
    """Run one harness process over samples[first:]; fill results; return the next index to grade."""
    n = len(sample_json)
    plan = bounds.plan(config)
    payload = _request_bytes(source, sample_json, item_json, first, config, batch_deadline, plan)
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
            if plan.mechanism != "rlimit":
                cgroup = bounds.LaunchCgroup(plan)
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
                            "(%d MiB)", killed, plan.total_memory_bytes // 1024**2)
            cgroup.destroy()  # after the sweep: nothing of this launch is left to keep it busy
        if launch.release is not None:
            launch.release()
    for index, outcome in run.outcomes.items():
        results[index] = outcome
    return run.conclude(proc, results, n)

