"""Runs INSIDE the python-grader sandbox (see this package's __init__); stdlib only, never imports
modelmill, and is never imported by it either: it is run by path.

Started as `python -I -S -B harness.py` with an empty environment: under bwrap this file is bound
read-only at /sandbox/harness.py (config.SANDBOX_HARNESS); the unsafe-subprocess backend and
bench/bench_python_grader.py run it where it lies (config.HARNESS). -I keeps this directory off
sys.path, so the package around it is not importable from inside. Protocol:

stdin  one JSON object: {"source", "samples", "items", "first" (index of samples[0] in the batch),
       "timeout" (seconds per grade() call and for loading the module), "limits" {rlimit name: value},
       "path" [extra sys.path entries], "max_details" (chars of error text per sample),
       "returns" ("score", the default, or "json")}.
stdout JSON lines, in order: {"started": true} once the harness is up; {"ready": true} once the
       grader module has loaded (or {"load_error": str}, and the harness exits); one line per sample,
       {"i": index, "score": float, "t": seconds} or {"i": index, "error": str, "t": seconds}
       ({"i": index, "json": str, "t": seconds} instead of a score when the request has "returns": "json");
       then {"done": true}.

The user's code never sees the result channel by name: fd 1 is re-pointed at /dev/null (prints are
dropped) and results go to a private duplicate of the original stdout. Whatever it writes anyway is
checked by the parent, which trusts nothing it reads. stderr is /dev/null for the grader too; the
harness keeps a private duplicate to report its own failure (exit status EX_SOFTWARE).
"""

import fcntl
import json
import math
import numbers
import os
import resource
import signal
import sys
import time
import traceback
import types

EX_SOFTWARE = 70  # the harness itself failed: the parent reports a server error

_RLIMITS = {
    "as": resource.RLIMIT_AS,
    "cpu": resource.RLIMIT_CPU,
    "nproc": resource.RLIMIT_NPROC,
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "core": resource.RLIMIT_CORE,
    "memlock": resource.RLIMIT_MEMLOCK,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
}

# Thread pools in numpy/scipy/sklearn read these when they load: one thread each, so a grader
# stays on its CPU budget and under RLIMIT_NPROC. Set here, not passed in, so the sandbox starts
# with an empty environment.
_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS")


_error_channel = 2  # where the harness reports its own failure (a private dup of stderr once set up)


class GraderTimeout(BaseException):
    """Raised by SIGALRM in the grader's frame; BaseException so `except Exception` lets it pass."""


def _on_alarm(signum, frame):
    raise GraderTimeout()


def _apply_limits(limits):
    for name, value in limits.items():
        which = _RLIMITS[name]
        value = int(value)
        if name == "cpu":
            # SIGXCPU at the soft limit, SIGKILL one second later.
            resource.setrlimit(which, (value, value + 1))
        else:
            resource.setrlimit(which, (value, value))


def _describe(exc, limit_chars):
    """'Type: message' plus the grader's own frames of the traceback, at most limit_chars."""
    try:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<grader>"]
        lines = traceback.format_list(frames[-5:])
        head = traceback.format_exception_only(type(exc), exc)[-1].strip()
        text = head + ("\n" + "".join(lines).rstrip() if lines else "")
    except BaseException:  # a hostile __str__ / __repr__
        text = type(exc).__name__
    return text[:limit_chars]


def _score(index, value):
    """The result line for what grade() returned: a finite number, else an error. Runs under the timer
    (float() may call the grader's own __float__)."""
    if not isinstance(value, numbers.Real):
        return {"i": index, "error": "grade() must return a number (int or float), got "
                                     + type(value).__name__[:100]}
    try:
        score = float(value)
    except OverflowError:
        return {"i": index, "error": "grade() returned a number out of float range"}
    if not math.isfinite(score):
        return {"i": index, "error": f"grade() returned a non-finite score ({score!r})"}
    return {"i": index, "score": score}


def _json(index, value):
    """The result line for what a tool function returned (request "returns": "json"): any JSON value,
    sent as JSON text. Runs under the timer (a huge value takes time to serialise)."""
    try:
        return {"i": index, "json": json.dumps(value, allow_nan=False, ensure_ascii=False)}
    except (TypeError, ValueError, RecursionError) as exc:
        return {"i": index, "error": "the function must return a JSON-serialisable value: " + str(exc)[:200]}


def _load_grader(source, timeout, max_details):
    """(grade, None) once the grader module has loaded, under the same time limit as one sample;
    else (None or whatever `grade` is, the load error)."""
    module = types.ModuleType("grader")
    module.__file__ = "<grader>"
    sys.modules["grader"] = module
    error = None
    started = time.monotonic()
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout)
            exec(compile(source, "<grader>", "exec"), module.__dict__)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except GraderTimeout:
        error = f"timeout: loading the grader took longer than {timeout:g}s"
    except BaseException as exc:  # noqa: BLE001 - anything the user's module-level code raises
        error = "error loading the grader: " + _describe(exc, max_details)
    if error is None and time.monotonic() - started > timeout:
        error = f"timeout: loading the grader took longer than {timeout:g}s"
    grade = module.__dict__.get("grade")
    if error is None and not callable(grade):
        error = "the grader source must define a function grade(sample, item)"
    return grade, error


def _grade_one(grade, index, sample, item, timeout, max_details, result_line=_score):
    """The result line for one sample: grade(sample, item) under the per-sample timer."""
    started = time.monotonic()
    try:
        try:
            # Re-armed every sample: the grader may have replaced the handler.
            signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout)
            result = result_line(index, grade(sample, item))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except GraderTimeout:
        result = None
    except MemoryError as exc:
        result = {"i": index, "error": "memory limit exceeded: " + _describe(exc, max_details)}
    except BaseException as exc:  # noqa: BLE001 - SystemExit, KeyboardInterrupt: still the grader's
        result = {"i": index, "error": _describe(exc, max_details)}
    elapsed = time.monotonic() - started
    if result is None or elapsed > timeout:
        result = {"i": index, "error": f"timeout: grade() took longer than {timeout:g}s"}
    result["t"] = round(elapsed, 6)
    return result


def main():
    raw = sys.stdin.buffer.read()
    os.close(0)
    request = json.loads(raw)
    del raw

    # Private result and error channels (fds >= 3, close-on-exec); fds 0, 1 and 2 are /dev/null from
    # here on, so whatever the grader prints is dropped (the parent never has to drain it).
    global _error_channel
    out_fd = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    _error_channel = fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, 3)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    out = os.fdopen(out_fd, "w", encoding="utf-8", buffering=1)
    sys.stdout = sys.stderr = open(os.devnull, "w")

    def emit(obj):
        out.write(json.dumps(obj, allow_nan=False) + "\n")

    for var in _THREAD_VARS:
        os.environ[var] = "1"
    os.environ["HOME"] = "/tmp"  # some packages (nltk) need a home; there is no passwd entry
    for entry in request.get("path", []):
        sys.path.append(entry)
    os.chdir("/tmp" if os.path.isdir("/tmp") else "/")
    _apply_limits(request.get("limits", {}))

    emit({"started": True})
    timeout = float(request["timeout"])
    max_details = int(request.get("max_details", 2000))
    samples, items, first = request["samples"], request["items"], int(request.get("first", 0))
    result_line = _json if request.get("returns") == "json" else _score
    signal.signal(signal.SIGALRM, _on_alarm)

    grade, error = _load_grader(request["source"], timeout, max_details)
    if error is not None:
        emit({"load_error": error[:max_details]})
        out.flush()
        return
    emit({"ready": True})

    for offset, (sample, item) in enumerate(zip(samples, items)):
        emit(_grade_one(grade, first + offset, sample, item, timeout, max_details, result_line))
    emit({"done": True})
    out.flush()


def _read_header():
    """`serve` mode's request: a decimal byte count and a newline, then that many bytes of JSON. Read
    straight from fd 0 to the exact byte, so nothing of the MCP traffic behind it is buffered away."""
    digits = b""
    while not digits.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte or len(digits) > 12:
            raise ValueError("no request header")
        digits += byte
    size, raw = int(digits), b""
    while len(raw) < size:
        chunk = os.read(0, size - len(raw))
        if not chunk:
            raise ValueError("the request header was cut short")
        raw += chunk
    return json.loads(raw)


def serve():
    """`harness.py --serve`: run an MCP server (agentic RFT, ml/mcp_servers.py) that talks JSON-RPC on
    fds 0 and 1 for as long as the parent keeps it. Request: {"source" (Python run as __main__) or
    "command" (argv to exec), "limits", "path"}. The limits and environment are set as for a grader
    first; this process stays the pid namespace's init (or execs the command in its place), so when it
    ends every process it started ends with it. Its stderr goes to the parent (read for diagnostics)."""
    global _error_channel
    request = _read_header()
    _error_channel = fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, 3)
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    os.environ["HOME"] = "/tmp"
    path = [entry for entry in request.get("path", [])]
    sys.path.extend(path)
    os.chdir("/tmp" if os.path.isdir("/tmp") else "/")
    _apply_limits(request.get("limits", {}))
    command = request.get("command")
    if command:
        if command[0] == "python":  # the sandbox's own interpreter, with the sandbox's packages
            os.environ["PYTHONPATH"] = ":".join(path)
            command = [sys.executable, "-B", *command[1:]]
        os.execv(command[0], command)
    module = types.ModuleType("__main__")
    module.__file__ = "<server>"
    sys.modules["__main__"] = module
    sys.argv = ["<server>"]
    exec(compile(request["source"], "<server>", "exec"), module.__dict__)
    _flush_stdio()


def _report_failure_and_exit(what: str):
    """Write the current exception's traceback (its last 4,000 characters) to the error channel, then exit
    with EX_SOFTWARE, even if the write fails."""
    try:
        message = f"{what}:\n" + traceback.format_exc()[-4000:]
        os.write(_error_channel, message.encode("utf-8", "replace"))
    finally:
        os._exit(EX_SOFTWARE)


def _flush_stdio():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001 - a closed or replaced stream
            pass


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    try:
        serve()
    except SystemExit as exc:  # the server's own exit, as Python would end it
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        _flush_stdio()
        os._exit(exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1))
    except BaseException:  # noqa: BLE001 - report why the server ended (exit status EX_SOFTWARE)
        _flush_stdio()
        _report_failure_and_exit("MCP server failed")
    os._exit(0)
elif __name__ == "__main__":
    try:
        main()
    except BaseException:  # noqa: BLE001 - the harness itself broke: say so and exit with EX_SOFTWARE
        _report_failure_and_exit("sandbox harness failed")
    os._exit(0)
