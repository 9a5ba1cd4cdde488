"""The python-grader sandbox (ml/graders/sandbox/): API, config, batching, classification, fail-closed.
Escape attempts are in test_sandbox_escapes.py. Tests needing bubblewrap skip where it cannot run."""

from __future__ import annotations

import logging
import math
import os
import struct

import pytest

from modelmill import errors
from modelmill.ml.graders import sandbox
from modelmill.ml.graders.sandbox import RUNTIME_ERROR, SERVER_ERROR, SandboxConfig, run_python_grader
from modelmill.ml.graders.sandbox.stream import _Run

FAST = SandboxConfig(wall_seconds=2.0, batch_wall_seconds=30.0, uid=2_100_000_000, uid_pool_size=16)

needs_bwrap = pytest.mark.skipif(not sandbox.available(FAST),
                                 reason=f"bwrap sandbox unavailable: {sandbox.unavailable_reason(FAST)}")


def grader(body: str) -> str:
    return "def grade(sample, item):\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())


def one(source: str, sample=None, item=None, config: SandboxConfig = FAST) -> sandbox.SandboxOutcome:
    return run_python_grader(source, [sample or {}], [item or {}], config)[0]


# --- config and API --------------------------------------------------------------------------


def test_config_defaults_are_openais_limits():
    c = SandboxConfig()
    assert c.backend == "bwrap"
    assert c.wall_seconds == 120.0 and c.memory_bytes == 2 * 1024**3 and c.max_code_bytes == 256 * 1024
    assert c.cpus == 1 and c.tmp_bytes <= 1024**3


@pytest.mark.parametrize("field, value", [
    ("wall_seconds", 121.0), ("wall_seconds", 0), ("memory_bytes", 2 * 1024**3 + 1), ("cpus", 3),
    ("tmp_bytes", 1024**3 + 1), ("max_code_bytes", 256 * 1024 + 1), ("uid", 0),
])
def test_config_refuses_limits_above_the_ceiling(field, value):
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**{field: value})


def test_unknown_backend_is_a_caller_error():
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        run_python_grader(grader("return 1"), [{}], [{}], SandboxConfig(backend="chroot"))


def test_backends_registry():
    assert set(sandbox.BACKENDS) == {"bwrap", "unsafe-subprocess"}


def test_lengths_must_match_and_empty_is_empty():
    with pytest.raises(ValueError):
        run_python_grader(grader("return 1"), [{}, {}], [{}], FAST)
    assert run_python_grader(grader("return 1"), [], [], FAST) == []


def test_outcome_errors_map_onto_openai_keys():
    ok = sandbox.SandboxOutcome(score=0.5)
    assert ok.errors() == {"python_grader_runtime_error": False, "python_grader_runtime_error_details": None,
                           "python_grader_server_error": False, "python_grader_server_error_type": None}
    rt = sandbox.SandboxOutcome(score=None, error=RUNTIME_ERROR, details="ValueError: boom")
    assert rt.errors()["python_grader_runtime_error"] is True
    assert rt.errors()["python_grader_runtime_error_details"] == "ValueError: boom"
    srv = sandbox.SandboxOutcome(score=None, error=SERVER_ERROR, details="sandbox_unavailable", message="no bwrap")
    assert srv.errors()["python_grader_server_error"] is True
    assert srv.errors()["python_grader_server_error_type"] == "sandbox_unavailable"


@pytest.mark.parametrize("rc, error, details", [
    (128 + 9, SERVER_ERROR, "memory_limit"),      # SIGKILL not sent by us: the kernel (OOM, CPU hard limit)
    (-9, SERVER_ERROR, "memory_limit"),           # the same from a bare child
    (128 + 11, SERVER_ERROR, "harness_crashed"),  # SIGSEGV
    (70, SERVER_ERROR, "harness_crashed"),        # the harness's own EX_SOFTWARE
    (128 + 24, RUNTIME_ERROR, "CPU time limit exceeded during grade()"),  # SIGXCPU
    (3, RUNTIME_ERROR, "the grader process exited (status 3) during grade()"),
])
def test_how_a_dead_process_is_classified(rc, error, details):
    outcome = _Run(FAST, 0)._death(rc, "", "grade()")
    assert outcome.error == error and outcome.details == details and outcome.score is None


# --- check_source ----------------------------------------------------------------------------


def test_check_source_accepts_a_grader():
    sandbox.check_source(grader("return 1.0"))
    sandbox.check_source("import math\n\ndef grade(sample, item, *rest):\n    return math.pi\n")
    sandbox.check_source("from difflib import SequenceMatcher as grade\n")  # any binding of the name


@pytest.mark.parametrize("source, match", [
    ("x = 1\n", "must define a function grade"),
    ("def grade(sample):\n    return 1\n", "two positional"),
    ("async def grade(sample, item):\n    return 1\n", "async"),
    ("def grade(sample, item):\n    return (\n", "does not compile"),
    ("def grade(sample, item): return 1\n\x00", "does not compile"),
    ("x = 1\n" * 50_000 + "def grade(s, i):\n    return 1\n", "the limit is 262144"),
    (b"def grade(s, i): return 1", "string"),
])
def test_check_source_rejects(source, match):
    with pytest.raises(errors.InvalidRequestError, match=match) as e:
        sandbox.check_source(source)
    assert e.value.param == "grader.source" and e.value.status == 400


# --- fail closed -----------------------------------------------------------------------------


def test_missing_bwrap_fails_closed():
    config = SandboxConfig(bwrap="/nonexistent/bwrap", wall_seconds=2.0)
    outcomes = run_python_grader(grader("return 1"), [{}, {}], [{}, {}], config)
    assert all(o.error == SERVER_ERROR and o.details == "sandbox_unavailable" and o.score is None for o in outcomes)
    assert "bubblewrap" in outcomes[0].message
    assert not sandbox.available(config)
    with pytest.raises(errors.ModelMillError) as e:
        sandbox.ensure_available(config)
    assert e.value.code == "sandbox_unavailable" and e.value.type == "server_error"


def test_a_sandbox_that_cannot_start_fails_closed(tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n")
    fake.chmod(0o755)
    outcomes = run_python_grader(grader("return 1"), [{}, {}], [{}, {}], SandboxConfig(bwrap=str(fake)))
    assert all(o.error == SERVER_ERROR and o.details == "sandbox_unavailable" for o in outcomes)
    assert "Creating new namespace failed" in outcomes[0].message


def test_oversized_source_is_a_runtime_error_without_starting_anything():
    source = "x = 1\n" * 50_000 + grader("return 1")
    outcomes = run_python_grader(source, [{}], [{}], SandboxConfig(bwrap="/nonexistent/bwrap"))
    assert outcomes[0].error == RUNTIME_ERROR and "262144" in outcomes[0].details


def test_unsafe_backend_warns_every_time(caplog):
    config = SandboxConfig(backend="unsafe-subprocess", wall_seconds=5.0)
    with caplog.at_level(logging.WARNING, logger="modelmill.ml.graders.sandbox"):
        for _ in range(2):
            assert one(grader("return 2"), config=config).score == 2.0
    assert sum("UNSAFE" in r.getMessage() for r in caplog.records) == 2


# --- grading in the sandbox ------------------------------------------------------------------


@needs_bwrap
def test_batch_scores_in_order_with_json_data():
    source = grader("return len(sample['output_text']) + item['bonus']")
    samples = [{"output_text": "x" * k + "ü€"} for k in range(50)]
    items = [{"bonus": 0.5}] * 50
    outcomes = run_python_grader(source, samples, items, FAST)
    assert [o.score for o in outcomes] == [k + 2.5 for k in range(50)]
    assert all(o.error is None and o.execution_time >= 0 for o in outcomes)


@needs_bwrap
@pytest.mark.parametrize("value, expected", [("1", 1.0), ("True", 1.0), ("0.25", 0.25), ("-3", -3.0),
                                             ("__import__('fractions').Fraction(1, 4)", 0.25)])
def test_numbers_are_scores(value, expected):
    assert one(grader(f"return {value}")).score == expected


@needs_bwrap
def test_exception_details_name_the_grader_line():
    o = one(grader("x = 1\nraise ValueError('boom')"))
    assert o.error == RUNTIME_ERROR and o.score is None
    assert o.details.startswith("ValueError: boom") and "line 3" in o.details


@needs_bwrap
def test_one_failing_sample_does_not_spoil_the_batch():
    source = grader("if sample['k'] == 1:\n    raise KeyError('k')\nreturn sample['k']")
    outcomes = run_python_grader(source, [{"k": k} for k in range(3)], [{}] * 3, FAST)
    assert [o.score for o in outcomes] == [0.0, None, 2.0]
    assert outcomes[1].error == RUNTIME_ERROR and "KeyError" in outcomes[1].details


@needs_bwrap
def test_a_sample_that_kills_its_process_is_classified_and_the_rest_still_graded():
    source = """
import os, signal
def grade(sample, item):
    k = sample['k']
    if k == 1:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        while True:
            pass
    if k == 3:
        os._exit(9)
    return k
"""
    config = SandboxConfig(wall_seconds=1.0, batch_wall_seconds=20.0, uid=2_100_000_000, uid_pool_size=16)
    outcomes = run_python_grader(source, [{"k": k} for k in range(5)], [{}] * 5, config)
    assert [o.score for o in outcomes] == [0.0, None, 2.0, None, 4.0]
    assert outcomes[1].error == RUNTIME_ERROR and outcomes[1].details.startswith("timeout")
    assert outcomes[3].error == RUNTIME_ERROR and "exited (status 9)" in outcomes[3].details


@needs_bwrap
def test_per_sample_timeout_inside_a_batch():
    source = grader("import time\nif sample['slow']:\n    time.sleep(10)\nreturn 1")
    config = SandboxConfig(wall_seconds=1.0, uid=2_100_000_000, uid_pool_size=16)
    outcomes = run_python_grader(source, [{"slow": s} for s in (False, True, False)], [{}] * 3, config)
    assert [o.score for o in outcomes] == [1.0, None, 1.0]
    assert outcomes[1].details == "timeout: grade() took longer than 1s"


@needs_bwrap
def test_batch_wall_limit():
    source = grader("import time\ntime.sleep(0.4)\nreturn 1")
    config = SandboxConfig(wall_seconds=2.0, batch_wall_seconds=1.0, uid=2_100_000_000, uid_pool_size=16)
    outcomes = run_python_grader(source, [{}] * 10, [{}] * 10, config)
    graded = [o for o in outcomes if o.score == 1.0]
    assert 1 <= len(graded) <= 3
    assert all(o.error == RUNTIME_ERROR and "batch" in o.details for o in outcomes[len(graded) + 1:])


@pytest.mark.parametrize("source, match", [
    ("def grade(sample, item):\n    return (\n", "SyntaxError"),
    ("x = 1\n", "must define a function grade"),
    ("raise RuntimeError('at import')\ndef grade(s, i):\n    return 1\n", "RuntimeError: at import"),
    ("while True:\n    pass\n", "timeout: loading the grader"),
])
@needs_bwrap
def test_load_errors_apply_to_every_sample(source, match):
    outcomes = run_python_grader(source, [{}, {}], [{}, {}], FAST)
    assert all(o.error == RUNTIME_ERROR and match in o.details for o in outcomes)


@needs_bwrap
def test_prints_do_not_disturb_results():
    source = grader("print('{\"i\": 99, \"score\": 5}')\nimport sys\nsys.stderr.write('noise\\n')\nreturn 1")
    assert [o.score for o in run_python_grader(source, [{}] * 3, [{}] * 3, FAST)] == [1.0] * 3


@needs_bwrap
def test_numpy_and_the_stdlib_are_importable():
    o = one(grader("import numpy as np, json, difflib, re, math, statistics\n"
                   "return float(np.mean(np.array(item['xs'])))"), item={"xs": [1, 2, 3, 6]},
            config=SandboxConfig(wall_seconds=20.0, uid=2_100_000_000, uid_pool_size=16))
    assert o.score == 3.0, o


@needs_bwrap
def test_venv_only_packages_are_not_there():
    # torch, openai, httpx live in the venv but are not offered to graders; nor is modelmill itself.
    source = grader("import importlib\n"
                    "for m in ('torch', 'openai', 'httpx', 'modelmill'):\n"
                    "    try:\n"
                    "        importlib.import_module(m)\n"
                    "        return 1\n"
                    "    except ImportError:\n"
                    "        pass\n"
                    "return 0")
    assert one(source).score == 0.0


@needs_bwrap
def test_interpreter_is_isolated_and_unprivileged():
    source = grader("import sys, os\n"
                    "assert sys.flags.isolated and sys.flags.no_site, sys.flags\n"
                    "assert os.getuid() != 0 and os.geteuid() != 0 and os.getgroups() in ([], [os.getgid()])\n"
                    "assert not any('site-packages' in p for p in sys.path), sys.path\n"
                    "return len(os.listdir('/proc/self/fd'))")
    o = one(source)
    assert o.error is None, o.details


@needs_bwrap
def test_importable_modules_lists_numpy():
    found = sandbox.importable_modules(SandboxConfig(wall_seconds=30.0, uid=2_100_000_000, uid_pool_size=16))
    assert found["numpy"] is True
    assert set(found) == set(sandbox.CANDIDATE_MODULES)


@needs_bwrap
def test_throughput_smoke():
    """Far below the bench's figure; catches a per-sample process by mistake."""
    import time

    n = 500
    source = grader("import difflib\nreturn difflib.SequenceMatcher(None, sample['t'], item['r']).ratio()")
    started = time.perf_counter()
    outcomes = run_python_grader(source, [{"t": f"a quick fox {k}"} for k in range(n)], [{"r": "a quick dog"}] * n,
                                 FAST)
    rate = n / (time.perf_counter() - started)
    assert all(o.error is None and 0 <= o.score <= 1 and math.isfinite(o.score) for o in outcomes)
    assert rate > 300, rate


def test_seccomp_program_shape():
    program = sandbox.seccomp_program()
    if program is None:
        pytest.skip("no seccomp program for this architecture")
    assert len(program) % 8 == 0 and 40 < len(program) // 8 < 200
    # Its first check is the architecture: a syscall of any other ABI is killed, never judged by
    # x86_64's numbers (struct sock_filter: u16 code, u8 jt, u8 jf, u32 k).
    (ld, _, _, k0), (jeq, jt, jf, k1) = struct.iter_unpack("<HBBI", program[:16])
    assert (ld, k0) == (0x20, 4) and (jeq, jt, k1) == (0x15, 0, 0xC000003E) and jf > 0


def test_no_seccomp_numbers_on_another_architecture(monkeypatch, caplog):
    """The deny list holds x86_64's syscall numbers: elsewhere no filter is built, and the bwrap
    launch says so instead of loading numbers meant for another ABI."""
    from modelmill.ml.graders.sandbox import backends, policy

    monkeypatch.setattr(policy.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(backends, "_warned", set())
    assert sandbox.seccomp_program() is None
    with caplog.at_level(logging.WARNING, logger="modelmill.ml.graders.sandbox"):
        launch = sandbox.BACKENDS["bwrap"].launch(FAST)
    try:
        assert "--seccomp" not in launch.argv
        assert any("no seccomp filter" in r.getMessage() and "aarch64" in r.getMessage() for r in caplog.records)
    finally:
        for fd in [*launch.pass_fds, launch.info_fd]:
            os.close(fd)
        if launch.release is not None:
            launch.release()


@needs_bwrap
def test_concurrent_batches_get_their_own_sandboxes():
    from concurrent.futures import ThreadPoolExecutor

    source = grader("import os, time\ntime.sleep(0.05)\nreturn float(os.getuid())")
    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: run_python_grader(source, [{}] * 3, [{}] * 3, FAST), range(4)))
    uids = [{o.score for o in outcomes} for outcomes in runs]
    assert all(len(u) == 1 for u in uids), uids  # one process per batch
    if os.geteuid() == 0:
        assert len(set.union(*uids)) == 4  # and, as root, one uid per concurrent sandbox
        assert set.union(*uids) <= set(map(float, range(FAST.uid, FAST.uid + FAST.uid_pool_size)))
