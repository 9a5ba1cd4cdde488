"""The python-grader sandbox bounded as a whole: memory and processes for the grader AND every
process it starts (the per-process rlimits are in policy.py).

RLIMIT_AS is per process and RLIMIT_NPROC per uid, so on their own a grader forking N children of
M bytes each holds N x M (4 children of 1.5 GiB all succeeded; 32 processes x 2 GiB is 64 GiB).
Each sandbox launch is therefore bounded in total by one of these mechanisms, chosen once per
process (SandboxConfig.bound: "auto" takes the first that works here, in this order; "cgroup"
requires one of the first two and fails closed without; "rlimit" forces the last):

  "cgroup-v2"  a cgroup v2 directory we may write whose subtree has the memory controller: each
               launch gets its own child cgroup with memory.max = total_memory_bytes,
               memory.swap.max = 0 and pids.max = max_processes. The directory is
               SandboxConfig.cgroup_parent (MODELMILL_SANDBOX_CGROUP) when set, else the service's
               own cgroup when memory is (or can be) enabled in its cgroup.subtree_control. v2's
               "no internal processes" rule means the service must not sit in that directory
               itself: when it is the only process there (a systemd unit with Delegate=yes, a
               container running only the service) it moves itself into a leaf child
               "modelmill-service" first, which is what systemd's delegation docs prescribe.
  "cgroup-v1"  the v1 memory hierarchy (plus pids when mounted): a child of the service's own
               cgroup in each, memory.limit_in_bytes (and memory.memsw.limit_in_bytes where swap
               is accounted) = total_memory_bytes, pids.max = max_processes. The CI host has v1
               only, and root may write there; others need a delegated directory.
  "rlimit"     no cgroup can be written: bubblewrap's namespaces and per-process rlimits only,
               with a lower process cap (rlimit_processes, default 4) and each process's address
               space scaled down so that processes x address space + the /tmp tmpfs <=
               total_memory_bytes. Still bounded; a grader just gets less per process.

The sandboxed process joins its cgroup before anything else runs: a /bin/sh wrapper writes "0"
(meaning itself) into each cgroup.procs, then execs the usual command (taskset, bwrap), so no
process of the sandbox can start outside the cgroup. (subprocess's preexec_fn could do the same
but is documented unsafe in a threaded server.) After the launch whatever is left in the cgroup is
killed and the cgroup removed.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import processes

log = logging.getLogger(__name__)

MECHANISMS = ("cgroup-v2", "cgroup-v1", "rlimit")
BOUND_CHOICES = ("auto", "cgroup", "rlimit")
CGROUP_PREFIX = "modelmill-sandbox-"
SERVICE_LEAF = "modelmill-service"
EX_CGROUP = 71  # the wrapper could not join its cgroup: the sandbox does not start

# Runs as the first process of a launch: join each cgroup.procs given, then exec the command.
_JOIN_SCRIPT = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo 0 > "$1" || exit 71; shift; n=$((n-1)); done; exec "$@"'


@dataclass(frozen=True)
class Detected:
    """What this host offers: the mechanism and, for a cgroup, the directories launches go under."""

    mechanism: str
    # cgroup-v2: (parent,). cgroup-v1: (memory parent,) or (memory parent, pids parent). rlimit: ().
    parents: tuple[str, ...] = ()
    # Why no cgroup is used (rlimit only), for the log and for bound="cgroup"'s refusal.
    reason: str | None = None


@dataclass(frozen=True)
class Plan:
    """The bounds of one launch: the mechanism and the rlimits the harness sets on itself."""

    mechanism: str
    parents: tuple[str, ...]
    total_memory_bytes: int
    max_processes: int
    rlimit_as: int  # RLIMIT_AS of each process
    rlimit_nproc: int  # RLIMIT_NPROC (processes + threads of the sandbox's uid)

    def describe(self) -> str:
        mib = self.total_memory_bytes // 1024**2
        if self.mechanism == "rlimit":
            return (f"rlimit: at most {self.rlimit_nproc} processes x {self.rlimit_as // 1024**2} MiB address space "
                    f"each (+ /tmp), {mib} MiB in all")
        return (f"{self.mechanism}: {mib} MiB and {self.max_processes} processes in all, one cgroup per launch "
                f"under {', '.join(self.parents)}")


# -- reading /proc ------------------------------------------------------------------------------------------


def parse_mountinfo(text: str) -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fs type, super options) per line of /proc/self/mountinfo."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        mounts.append((fields[3], point, tail[0], set(tail[2].split(","))))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/self/cgroup -> {controller: path}; the v2 entry is under "" (hierarchy 0)."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                out[controller] = parts[2]
    return out


def _join(mount_root: str, mount_point: str, path: str) -> str | None:
    if mount_root != "/":
        if path != mount_root and not path.startswith(mount_root.rstrip("/") + "/"):
            return None  # our cgroup is not visible under this mount
        path = path[len(mount_root):] or "/"
    return os.path.normpath(mount_point + "/" + path.lstrip("/"))


def own_cgroup_dirs(mountinfo: str, proc_cgroup: str) -> dict[str, str]:
    """Directories of this process's cgroups: {"v2": dir, "memory": dir, "pids": dir}, those that exist."""
    mine = parse_proc_cgroup(proc_cgroup)
    dirs: dict[str, str] = {}
    for root, point, fstype, options in parse_mountinfo(mountinfo):
        if fstype == "cgroup2" and "" in mine and "v2" not in dirs:
            d = _join(root, point, mine[""])
            if d and os.path.isdir(d):
                dirs["v2"] = d
        elif fstype == "cgroup":
            for controller in ("memory", "pids"):
                if controller in options and controller in mine and controller not in dirs:
                    d = _join(root, point, mine[controller])
                    if d and os.path.isdir(d):
                        dirs[controller] = d
    return dirs


def _read(path: str) -> str:
    return Path(path).read_text()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


# -- detection ------------------------------------------------------------------------------------------


def _usable_parent(parents: tuple[str, ...], files: dict[str, str]) -> str | None:
    """Make, limit and remove a probe child under parents[0]; None when that works, else why not."""
    probe = os.path.join(parents[0], f"{CGROUP_PREFIX}probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except FileExistsError:
        pass
    except OSError as e:
        return f"cannot create a cgroup under {parents[0]}: {e.strerror}"
    try:
        for name, value in files.items():
            _write(os.path.join(probe, name), value)
        return None
    except OSError as e:
        return f"cannot set limits in a cgroup under {parents[0]}: {e.strerror}"
    finally:
        try:
            os.rmdir(probe)
        except OSError:
            pass


def _v2_parent(directory: str, explicit: bool) -> tuple[str | None, str | None]:
    """(a v2 directory whose children get the memory controller, None) or (None, why not)."""
    try:
        available = _read(os.path.join(directory, "cgroup.controllers")).split()
        enabled = _read(os.path.join(directory, "cgroup.subtree_control")).split()
    except OSError as e:
        return None, f"cannot read {directory}: {e.strerror}"
    if "memory" not in available:
        return None, f"the memory controller is not delegated to {directory}"
    missing = [c for c in ("memory", "pids") if c in available and c not in enabled]
    if not missing:
        return directory, None
    control = os.path.join(directory, "cgroup.subtree_control")
    try:
        _write(control, " ".join("+" + c for c in missing))
        return directory, None
    except OSError as e:
        if e.errno != errno.EBUSY or explicit:
            return None, f"cannot enable {'+'.join(missing)} in {control}: {e.strerror}"
    # EBUSY: processes live in this directory ("no internal processes"). Move this one into a leaf,
    # but only when it is alone there: never move processes that are not ours.
    try:
        procs = _read(os.path.join(directory, "cgroup.procs")).split()
        if procs != [str(os.getpid())]:
            return None, f"{directory} holds other processes, so its subtree cannot get the memory controller"
        leaf = os.path.join(directory, SERVICE_LEAF)
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
        _write(control, " ".join("+" + c for c in missing))
        log.info("python grader sandbox: moved the service into %s to delegate %s's subtree", leaf, directory)
        return directory, None
    except OSError as e:
        return None, f"cannot delegate {directory}'s subtree: {e.strerror}"


def detect(bound: str = "auto", cgroup_parent: str | None = None) -> Detected:
    """Which mechanism bounds the sandbox here (see the module docstring); never raises."""
    if bound == "rlimit":
        return Detected("rlimit", reason="SandboxConfig.bound is 'rlimit'")
    if not os.path.exists("/bin/sh"):
        return Detected("rlimit", reason="/bin/sh is missing (it joins the cgroup)")
    try:
        if cgroup_parent:
            parent, why = _v2_parent(cgroup_parent, explicit=True)
            if parent is None:
                return Detected("rlimit", reason=f"MODELMILL_SANDBOX_CGROUP: {why}")
            why = _usable_parent((parent,), {"memory.max": str(256 * 1024**2)})
            return Detected("cgroup-v2", (parent,)) if why is None else Detected("rlimit", reason=why)
        dirs = own_cgroup_dirs(_read("/proc/self/mountinfo"), _read("/proc/self/cgroup"))
    except OSError as e:
        return Detected("rlimit", reason=f"cannot read this process's cgroups: {e}")
    reasons = []
    if "v2" in dirs:
        parent, why = _v2_parent(dirs["v2"], explicit=False)
        if parent is not None:
            why = _usable_parent((parent,), {"memory.max": str(256 * 1024**2)})
            if why is None:
                return Detected("cgroup-v2", (parent,))
        reasons.append(f"cgroup v2: {why}")
    if "memory" in dirs:
        parents = (dirs["memory"],) + ((dirs["pids"],) if "pids" in dirs else ())
        why = _usable_parent(parents, {"memory.limit_in_bytes": str(256 * 1024**2)})
        if why is None and len(parents) > 1 and _usable_parent(parents[1:], {"pids.max": "8"}) is not None:
            parents = parents[:1]  # pids not writable: RLIMIT_NPROC still caps processes
        if why is None:
            return Detected("cgroup-v1", parents)
        reasons.append(f"cgroup v1: {why}")
    if not reasons:
        reasons.append("no cgroup memory controller is mounted for this process")
    return Detected("rlimit", reason="; ".join(reasons))


_detected: dict[tuple, Detected] = {}
_detect_lock = threading.Lock()


def detected(bound: str = "auto", cgroup_parent: str | None = None) -> Detected:
    """detect(), once per process per (bound, cgroup_parent), logging the choice."""
    key = (bound, cgroup_parent)
    with _detect_lock:
        if key not in _detected:
            found = detect(bound, cgroup_parent)
            _sweep_stale(found)
            _detected[key] = found
            if found.mechanism == "rlimit":
                log.info("python grader sandbox bounded by rlimits (no cgroup: %s)", found.reason)
            else:
                log.info("python grader sandbox bounded by %s under %s", found.mechanism, ", ".join(found.parents))
        return _detected[key]


def plan(config) -> Plan:
    """The bounds for a launch with this SandboxConfig."""
    found = detected(config.bound, config.cgroup_parent)
    if found.mechanism == "rlimit":
        nproc = min(config.max_processes, config.rlimit_processes)
        per_process = min(config.memory_bytes, (config.total_memory_bytes - config.tmp_bytes) // nproc)
        return Plan("rlimit", (), config.total_memory_bytes, nproc, per_process, nproc)
    return Plan(found.mechanism, found.parents, config.total_memory_bytes, config.max_processes,
                config.memory_bytes, config.max_processes)


def unavailable_reason(config) -> str | None:
    """Why config.bound cannot be honoured here (bound="cgroup" without a usable cgroup), else None."""
    if config.bound != "cgroup":
        return None
    found = detected(config.bound, config.cgroup_parent)
    return None if found.mechanism != "rlimit" else f"bound='cgroup' but no cgroup can be used: {found.reason}"


# -- one launch's cgroup -----------------------------------------------------------------------------------

_counter = itertools.count()


class LaunchCgroup:
    """The cgroup (one directory per hierarchy) of one sandbox launch."""

    def __init__(self, plan_: Plan):
        self.plan = plan_
        name = f"{CGROUP_PREFIX}{os.getpid()}-{next(_counter)}"
        self.dirs: list[str] = []
        try:
            for parent in plan_.parents:
                d = os.path.join(parent, name)
                os.mkdir(d)
                self.dirs.append(d)
                self._limit(d)
        except BaseException:
            self.destroy()
            raise

    def _limit(self, d: str) -> None:
        # pids.max: bwrap's own monitor process, outside the grader's pid namespace, counts here too.
        total, nproc = str(self.plan.total_memory_bytes), str(self.plan.max_processes + 1)
        if self.plan.mechanism == "cgroup-v2":
            _write(os.path.join(d, "memory.max"), total)
            _optional(os.path.join(d, "memory.swap.max"), "0")
            _optional(os.path.join(d, "pids.max"), nproc)
        elif os.path.exists(os.path.join(d, "memory.limit_in_bytes")):
            _write(os.path.join(d, "memory.limit_in_bytes"), total)
            _optional(os.path.join(d, "memory.memsw.limit_in_bytes"), total)  # only with swap accounting
        else:
            _write(os.path.join(d, "pids.max"), nproc)

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run as a process that first joins this cgroup."""
        procs = [os.path.join(d, "cgroup.procs") for d in self.dirs]
        return ["/bin/sh", "-c", _JOIN_SCRIPT, "sh", str(len(procs)), *procs, *argv]

    def oom_killed(self) -> int:
        """How many processes the kernel's OOM killer took in this cgroup (0 when unknown)."""
        name = "memory.events" if self.plan.mechanism == "cgroup-v2" else "memory.oom_control"
        for d in self.dirs[:1]:
            try:
                for line in _read(os.path.join(d, name)).splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
            except (OSError, ValueError):
                pass
        return 0

    def peak_bytes(self) -> int | None:
        """The most memory the cgroup held at once (v1 memory.max_usage_in_bytes, v2 memory.peak)."""
        name = "memory.peak" if self.plan.mechanism == "cgroup-v2" else "memory.max_usage_in_bytes"
        try:
            return int(_read(os.path.join(self.dirs[0], name)).split()[0]) if self.dirs else None
        except (OSError, ValueError, IndexError):
            return None

    def destroy(self) -> None:
        """Kill whatever is left in the cgroup and remove it."""
        for d in reversed(self.dirs):
            _remove(d)
        self.dirs = []


def _optional(path: str, value: str) -> None:
    try:
        _write(path, value)
    except OSError:
        pass


def _remove(d: str, attempts: int = 500) -> None:
    for _ in range(attempts):
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                log.error("python grader sandbox: cannot remove cgroup %s: %s", d, e.strerror)
                return
        _kill_members(d)
        time.sleep(0.002)
    log.error("python grader sandbox: cgroup %s still holds processes", d)


def _kill_members(d: str) -> None:
    if os.path.exists(os.path.join(d, "cgroup.kill")):
        _optional(os.path.join(d, "cgroup.kill"), "1")
        return
    try:
        pids = [int(p) for p in _read(os.path.join(d, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return
    processes.kill_all(pids)


def _sweep_stale(found: Detected) -> None:
    """Remove launch cgroups left by a service process that died (its pid is gone)."""
    for parent in found.parents:
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for name in names:
            if not name.startswith(CGROUP_PREFIX):
                continue
            owner = name[len(CGROUP_PREFIX):].split("-")[0]
            if owner.isdigit() and int(owner) != os.getpid() and not os.path.exists(f"/proc/{owner}"):
                _remove(os.path.join(parent, name), attempts=50)
