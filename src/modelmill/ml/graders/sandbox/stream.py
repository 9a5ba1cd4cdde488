"""One harness process, watched from outside: _Run writes the request to its stdin, reads its
result lines (trusting nothing: every line is checked against the protocol in harness.py), keeps
its clocks (start-up, per sample, per batch) and classifies how it ended."""

from __future__ import annotations

import json
import logging
import math
import os
import selectors
import signal
import subprocess
import time

from .backends import Launch, ns_init_pid
from .config import SandboxConfig, SandboxOutcome, _UNSAFE_TEXT, _runtime, _server

log = logging.getLogger(__name__)

EX_SOFTWARE = 70  # harness.EX_SOFTWARE (not imported: the harness is run by path, stdlib only)
_STARTUP_SECONDS = 10.0  # bwrap + interpreter start, before the harness says "started"
_GRACE_SECONDS = 1.0  # past a sample's limit before the outside kills what SIGALRM did not stop


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
        """Feed the request, read results until done, a limit, or a protocol violation."""
        # long: one select loop over the child's four streams and its clocks reads best in one place, and
        # split up, its shared state (bytes sent, the partial line, the time of the last result) would
        # have to become attributes that every piece could change.
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
        pid = ns_init_pid(info)
        if pid is not None:
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
        elif keys == {"json"} and isinstance(msg["json"], str) and self.config.returns == "json":
            outcome = SandboxOutcome(score=None, value=msg["json"], execution_time=t)
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
