"""What the sandboxed process may do, beyond its namespaces: the seccomp filter bwrap installs
(--seccomp) and the rlimits the harness sets on itself before any grader code runs.

Why the seccomp filter is hand-written classic BPF rather than built by a library:
  - libseccomp's own Python bindings are not on PyPI. Debian's python3-seccomp is built for the
    system interpreter, not the venv; the one PyPI republish (mephi42-seccomp) has no
    installable distribution here, so a fresh clone could not install it from pyproject.
  - pyseccomp (a ctypes wrapper over libseccomp.so.2) was last released in 2021, and it would add
    a system library the sandbox must find at run time: one more way for it to be unavailable.
  - seccompy (pure Python, 2026) assembles BPF from its own hand-kept syscall tables: the same
    kind of table as below, from a young project, for no gain in what is checked.
  - bwrap takes the raw `struct sock_filter[]` on an fd; nothing needs loading in-process. The
    program is a deny list (about 60 syscalls) plus three argument checks, built once per launch,
    and tests/ml/graders/test_sandbox_escapes.py tries the denied calls from inside a real sandbox.
The numbers below are x86_64's (arch/x86/entry/syscalls/syscall_64.tbl). The guard is twofold:
seccomp_program() returns None on any other machine (the bwrap backend then logs that it runs
without a filter, and loads no numbers meant for another ABI), and the program's first check kills
a process whose syscall arch is not AUDIT_ARCH_X86_64; x32-ABI calls (nr >= 0x40000000) get EPERM.
"""

from __future__ import annotations

import math
import platform
import struct

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


def rlimits(config, plan, budget_seconds: float) -> dict[str, int]:
    """The rlimits the harness sets on itself (its `limits` request field), for one launch of a
    SandboxConfig under a bounds.Plan: address space and processes as the plan says, CPU seconds
    for the time left to the batch (budget_seconds) on config.cpus cores, /tmp's size as the
    largest file, no core dumps and no POSIX message queues."""
    return {"as": plan.rlimit_as, "cpu": math.ceil(budget_seconds * config.cpus) + 1,
            "nproc": plan.rlimit_nproc, "fsize": config.tmp_bytes, "nofile": config.max_open_files,
            "core": 0, "msgqueue": 0}
