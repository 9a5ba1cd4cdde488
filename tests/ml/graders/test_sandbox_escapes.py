"""Escape attempts against the bwrap python-grader sandbox. Each must end in a classified error (or,
where the attempt itself cannot fail loudly, in a harmless result) and leave no process behind:
after every test no process of the sandbox uid pool, no harness, and no bwrap child of ours lives."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from modelmill import errors
from modelmill.ml.graders import sandbox
from modelmill.ml.graders.sandbox import RUNTIME_ERROR, SERVER_ERROR, SandboxConfig, run_python_grader
from modelmill.ml.graders.sandbox.processes import live_processes
from tests.ml.sandbox_checks import plant_secret, secret_scan_body

UID, POOL = 2_100_000_000, 16
CONFIG = SandboxConfig(wall_seconds=2.0, batch_wall_seconds=20.0, memory_bytes=512 * 1024**2,
                       tmp_bytes=8 * 1024**2, max_processes=32, uid=UID, uid_pool_size=POOL)

pytestmark = pytest.mark.skipif(not sandbox.available(CONFIG),
                                reason=f"bwrap sandbox unavailable: {sandbox.unavailable_reason(CONFIG)}")


def grader(body: str) -> str:
    return "def grade(sample, item):\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())


def attempt(body: str, *, sample=None, item=None, config: SandboxConfig = CONFIG) -> sandbox.SandboxOutcome:
    return run_python_grader(grader(body), [sample or {}], [item or {}], config)[0]


def assert_refused(outcome: sandbox.SandboxOutcome, *fragments: str) -> None:
    assert outcome.score is None and outcome.error in (RUNTIME_ERROR, SERVER_ERROR), outcome
    assert outcome.details, outcome
    if fragments:
        assert any(f in outcome.details for f in fragments), outcome


def leftovers() -> list[str]:
    """Live processes of this test's sandboxes: a uid of its pool (as root; else the harness on the
    command line), or a bwrap whose parent is this test process."""
    me = os.getpid()
    # As root each sandbox has a uid of its own, so other sessions' sandboxes do not count; as
    # another user the harness's command line is all there is to go by.
    return [f"{p.pid}: {p.cmdline[:120]}" for p in live_processes() if p.pid != me and (
        (p.uids & set(range(UID, UID + POOL)) if os.geteuid() == 0 else sandbox.SANDBOX_HARNESS in p.cmdline)
        or (p.ppid == me and "bwrap" in p.cmdline))]


@pytest.fixture(autouse=True)
def nothing_left_behind():
    assert not leftovers(), "sandbox processes alive before the test"
    yield
    found = leftovers()
    if found:  # give the kernel a moment to finish a namespace teardown, then insist
        time.sleep(0.2)
        found = leftovers()
    assert not found, f"processes left behind: {found}"


# --- network ---------------------------------------------------------------------------------


def test_tcp_connect():
    assert_refused(attempt("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\nreturn 1"),
                   "Permission", "Network is unreachable")


def test_tcp_connect_to_loopback_service():
    # Even the host's own loopback is another namespace's.
    assert_refused(attempt("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=1)\nreturn 1"),
                   "Permission", "refused", "unreachable")


def test_udp_send():
    assert_refused(attempt("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                           "s.sendto(b'x', ('8.8.8.8', 53))\nreturn 1"), "Permission", "unreachable")


def test_ipv6_and_raw_sockets():
    assert_refused(attempt("import socket\nsocket.socket(socket.AF_INET6, socket.SOCK_STREAM)\nreturn 1"))
    assert_refused(attempt("import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)\nreturn 1"))
    assert_refused(attempt("import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW)\nreturn 1"))


def test_dns_resolve():
    assert_refused(attempt("import socket\nsocket.getaddrinfo('example.com', 443)\nreturn 1"),
                   "gaierror", "name resolution", "Permission")


# --- filesystem ------------------------------------------------------------------------------


def test_read_etc_shadow():
    assert_refused(attempt("return len(open('/etc/shadow').read())"), "No such file", "Permission")


def test_etc_is_nearly_empty():
    o = attempt("import os\nreturn len(os.listdir('/etc'))")
    assert o.score == 1.0  # ld.so.cache only


def test_read_the_services_database(tmp_path):
    db = tmp_path / "modelmill.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE secrets (value TEXT)")
        conn.execute("INSERT INTO secrets VALUES ('sk-top-secret')")
    body = ("import sqlite3\n"
            "data = open(item['path'], 'rb').read()\n"
            "return float(b'sk-top-secret' in data)")
    assert_refused(attempt(body, item={"path": str(db)}), "No such file", "Permission")
    body = ("import sqlite3\n"
            "conn = sqlite3.connect('file:' + item['path'] + '?mode=ro', uri=True)\n"
            "return float(len(conn.execute('select * from secrets').fetchall()))")
    assert_refused(attempt(body, item={"path": str(db)}), "unable to open", "No such file")


def test_read_the_service_home_and_sources():
    paths = [str(Path.home()), "/root/.modelmill", str(Path(sandbox.__file__).resolve().parents[4]), "/work"]
    body = ("import os\n"
            "for p in item['paths']:\n"
            "    if os.path.exists(p) and os.listdir(p):\n"
            "        raise AssertionError('visible: ' + p)\n"
            "return 0")
    # /root exists (the interpreter lives under it) but only the interpreter's own directory is bound.
    o = attempt(body, item={"paths": [p for p in paths if p != "/root"]})
    assert o.score == 0.0, o
    o = attempt("import os\nreturn len(os.listdir('/root'))")
    assert o.score in (0.0, 1.0)  # nothing, or just .pyenv on the way to the interpreter


@pytest.mark.parametrize("path", ["/usr/evil", "/evil", "/etc/evil", "/sandbox/lib/evil", "/proc/evil",
                                  "/dev/shm/evil", sandbox.SANDBOX_HARNESS])
def test_write_outside_tmp(path):
    assert_refused(attempt("open(item['path'], 'w').write('x')\nreturn 1", item={"path": path}),
                   "Read-only", "Permission", "No such file")


def test_write_in_tmp_is_allowed_and_private():
    assert attempt("open('/tmp/scratch', 'w').write('x')\nreturn len(open('/tmp/scratch').read())").score == 1.0
    assert not Path("/tmp/scratch").exists()


def test_disk_fill_of_the_tmpfs():
    body = ("k = 0\n"
            "while True:\n"
            "    with open(f'/tmp/fill{k}', 'wb') as f:\n"
            "        f.write(b'x' * 1024 * 1024)\n"
            "    k += 1")
    assert_refused(attempt(body), "No space left", "File too large")


def test_one_huge_file():
    assert_refused(attempt("f = open('/tmp/big', 'wb')\nwhile True:\n    f.write(b'x' * 10**6)"),
                   "No space left", "File too large")


# --- environment and other processes -----------------------------------------------------------


def test_secrets_in_the_environment_stay_out(monkeypatch):
    secret = plant_secret(monkeypatch, "sk-sandbox-test", "MODELMILL_TEST_SECRET", "OPENAI_API_KEY")
    body = secret_scan_body("SECRET") + "return float(len(seen))"
    o = attempt(body, item={"secret": secret})
    assert o.error is None and o.score == 0.0, o


def test_only_the_sandbox_is_visible_in_proc():
    o = attempt("import os\nreturn float(len([p for p in os.listdir('/proc') if p.isdigit()]))")
    assert o.error is None and o.score <= 2.0, o


def test_ptrace():
    body = ("import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "for pid in (1, os.getppid() or 1):\n"
            "    if libc.ptrace(16, pid, 0, 0) == 0:\n"  # PTRACE_ATTACH
            "        return 1\n"
            "if libc.ptrace(0, 0, 0, 0) == 0:\n"  # PTRACE_TRACEME
            "    return 1\n"
            "raise OSError(ctypes.get_errno(), 'ptrace refused')")
    assert_refused(attempt(body), "ptrace refused")


def test_new_namespaces_and_mounts():
    body = ("import ctypes\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET = 0x10000000, 0x00020000, 0x40000000\n"
            "for flags in (CLONE_NEWUSER, CLONE_NEWUSER | CLONE_NEWNS, CLONE_NEWNET):\n"
            "    if libc.unshare(flags) == 0:\n"
            "        return 1\n"
            "if libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0:\n"
            "    return 1\n"
            "raise OSError(ctypes.get_errno(), 'refused')")
    assert_refused(attempt(body), "refused")


def test_cannot_unpin_its_cpu():
    assert_refused(attempt("import os\nos.sched_setaffinity(0, range(os.cpu_count()))\nreturn 1"),
                   "Operation not permitted")


def test_runs_without_privileges():
    o = attempt("import os\nreturn float(os.getuid() == 0 or os.geteuid() == 0 or 0 in os.getgroups())")
    assert o.error is None and o.score == 0.0, o
    o = attempt("import os\nos.setuid(0)\nreturn 1")
    assert_refused(o, "Operation not permitted")
    body = ("status = dict(line.split(':', 1) for line in open('/proc/self/status').read().splitlines())\n"
            "assert status['NoNewPrivs'].strip() == '1', status['NoNewPrivs']\n"
            "for caps in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb'):\n"
            "    assert int(status[caps], 16) == 0, (caps, status[caps])\n"
            "assert status['Seccomp'].strip() == '2', status['Seccomp']\n"
            "return 0")
    o = attempt(body)
    assert o.error is None and o.score == 0.0, o
    # setuid binaries in /usr do not help (no_new_privs; nosuid binds).
    body = ("import subprocess\n"
            "out = subprocess.run(['/usr/bin/su', '-c', 'id -u', 'root'], capture_output=True, text=True)\n"
            "if out.returncode == 0 and out.stdout.strip() == '0':\n"
            "    return 1\n"
            "raise PermissionError('su refused: ' + out.stderr[:100])")
    if Path("/usr/bin/su").exists():
        assert_refused(attempt(body), "su refused", "can't start new", "Permission")


# --- resource exhaustion -----------------------------------------------------------------------


def test_fork_bomb():
    started = time.monotonic()
    assert_refused(attempt("import os\nwhile True:\n    os.fork()"), "Resource temporarily unavailable",
                   "timeout", "memory")
    assert time.monotonic() - started < 10


def test_thread_bomb():
    body = ("import threading, time\n"
            "while True:\n"
            "    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()")
    assert_refused(attempt(body), "can't start new thread", "Resource temporarily unavailable", "timeout")


def test_memory_bomb():
    assert_refused(attempt("x = []\nwhile True:\n    x.append(bytearray(10**7))"), "memory", "MemoryError")


def test_one_huge_allocation():
    assert_refused(attempt("return len(bytearray(4 * 1024**3))"), "memory", "MemoryError")


def test_cpu_spin():
    started = time.monotonic()
    assert_refused(attempt("while True:\n    pass"), "timeout")
    assert time.monotonic() - started < 6


def test_cpu_spin_that_ignores_the_alarm():
    started = time.monotonic()
    body = ("import signal\n"
            "signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
            "signal.setitimer(signal.ITIMER_REAL, 0)\n"
            "while True:\n"
            "    try:\n"
            "        pass\n"
            "    except BaseException:\n"
            "        pass")
    assert_refused(attempt(body), "timeout")
    assert time.monotonic() - started < 8


def test_spin_inside_c_code():
    assert_refused(attempt("import re\nreturn float(bool(re.match('(a+)+$', 'a' * 64 + 'b')))"), "timeout")


def test_spin_that_swallows_the_timeout():
    body = ("while True:\n"
            "    try:\n"
            "        while True:\n"
            "            pass\n"
            "    except BaseException:\n"
            "        continue")
    assert_refused(attempt(body), "timeout")


def test_daemon_left_running_after_grade_returns():
    body = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(60)\n"
            "    os._exit(0)\n"
            "return 1")
    o = attempt(body)
    assert o.score == 1.0  # grade returned; the fixture checks that the daemon is gone


def test_daemon_holding_the_pipes_open():
    body = ("import os, time, signal\n"
            "if os.fork() == 0:\n"
            "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "    os.setsid()\n"
            "    while True:\n"
            "        time.sleep(1)\n"
            "return 1")
    started = time.monotonic()
    assert attempt(body).score == 1.0
    assert time.monotonic() - started < 3


def test_grader_cannot_kill_the_harness_quietly():
    o = attempt("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\nreturn 1")
    assert o.score in (None, 1.0)
    if o.score is None:
        assert_refused(o)


# --- what grade() returns ----------------------------------------------------------------------


@pytest.mark.parametrize("value, fragment", [
    ("float('nan')", "non-finite"), ("float('inf')", "non-finite"), ("-float('inf')", "non-finite"),
    ("'1.0'", "got str"), ("None", "got NoneType"), ("[0] * 10**7", "got list"), ("{'score': 1}", "got dict"),
    ("10**400", "out of float range"), ("complex(1, 0)", "got complex"),
    ("__import__('decimal').Decimal('NaN')", "got Decimal"),
])
def test_bad_scores(value, fragment):
    assert_refused(attempt(f"return {value}"), fragment)


def test_huge_object_with_a_hostile_float():
    body = ("import numbers\n"
            "class Evil(float):\n"
            "    def __float__(self):\n"
            "        while True:\n"
            "            pass\n"
            "return Evil(1.0)")
    o = attempt(body)
    assert o.score == 1.0 or o.error == RUNTIME_ERROR  # a float subclass is a float; no hang either way


def test_huge_exception_message_is_capped():
    o = attempt("raise ValueError('x' * 10**7)")
    assert_refused(o, "ValueError")
    assert len(o.details) <= CONFIG.max_error_chars


def test_flooding_the_result_channel():
    body = ("import os\n"
            "for fd in map(int, os.listdir('/proc/self/fd')):\n"
            "    if fd > 2:\n"
            "        try:\n"
            "            os.write(fd, b'x' * (1 << 20))\n"
            "        except OSError:\n"
            "            pass\n"
            "return 1")
    assert_refused(attempt(body), "output too large", "not a result", "exited")


def test_forging_results():
    body = ("import os\n"
            "for fd in map(int, os.listdir('/proc/self/fd')):\n"
            "    if fd > 2:\n"
            "        try:\n"
            "            os.write(fd, b'{\"i\": 5, \"score\": 1}\\n')\n"
            "        except OSError:\n"
            "            pass\n"
            "return 0.5")
    outcomes = run_python_grader(grader(body), [{}, {}], [{}, {}], CONFIG)
    assert outcomes[0].error == RUNTIME_ERROR and "out-of-order" in outcomes[0].details
    assert outcomes[1].score is None or outcomes[1].score == 0.5  # regraded in a fresh sandbox


def test_printing_a_lot_is_harmless():
    body = ("import os, sys\n"
            "for _ in range(20000):\n"
            "    print('x' * 1000)\n"
            "    sys.stderr.write('y' * 1000)\n"
            "    os.write(2, b'z' * 1000)\n"
            "return 1")
    assert attempt(body).score == 1.0


def test_exit_from_grade():
    assert_refused(attempt("import sys\nsys.exit(0)"), "SystemExit")
    assert_refused(attempt("import os\nos._exit(0)"), "exited")


# --- source --------------------------------------------------------------------------------


def test_code_over_256_kb():
    source = "# " + "x" * (256 * 1024) + "\n" + grader("return 1")
    with pytest.raises(errors.InvalidRequestError) as e:
        sandbox.check_source(source)
    assert e.value.param == "grader.source"
    assert_refused(run_python_grader(source, [{}], [{}], CONFIG)[0], "the limit is 262144")
