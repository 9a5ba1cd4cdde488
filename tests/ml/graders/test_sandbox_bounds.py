"""The python-grader sandbox bounded as a whole (ml/graders/sandbox/bounds.py): memory and processes of
the grader and all its children together, by a cgroup where one can be written, else by rlimits scaled
so processes x address space stays under the total. The fork test runs on every mechanism this host
offers; the cgroup parsing and v2 delegation are tested on fake cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelmill.ml.graders import sandbox
from modelmill.ml.graders.sandbox import SandboxConfig, run_python_grader
from modelmill.ml.graders.sandbox import bounds as sandbox_bounds
from tools.reliability.sandbox_probe import FORK_4_X_1_5_GIB, FORK_BOMB, DescendantSampler

MIB = 1024**2
BASE = dict(wall_seconds=10.0, batch_wall_seconds=30.0, total_memory_bytes=512 * MIB, tmp_bytes=8 * MIB,
            max_processes=16, uid=2_100_000_000, uid_pool_size=16)
HERE = sandbox_bounds.detect().mechanism  # what "auto" picks on this host
BOUNDS = ["rlimit"] + (["auto"] if HERE != "rlimit" else [])

needs_bwrap = pytest.mark.skipif(not sandbox.available(SandboxConfig(**BASE)),
                                 reason=f"bwrap sandbox unavailable: {sandbox.unavailable_reason(SandboxConfig(**BASE))}")

# --- the fork tests --------------------------------------------------------------------------------


@needs_bwrap
@pytest.mark.parametrize("bound", BOUNDS)
def test_four_children_of_1_5_gib_stay_within_the_total(bound, monkeypatch):
    config = SandboxConfig(**BASE, bound=bound)
    cgroup_peaks = []
    real_destroy = sandbox_bounds.LaunchCgroup.destroy

    def destroy(self):  # the cgroup's own high-water mark, read just before it goes
        cgroup_peaks.append(self.peak_bytes())
        real_destroy(self)

    monkeypatch.setattr(sandbox_bounds.LaunchCgroup, "destroy", destroy)
    with DescendantSampler() as seen:
        outcome = run_python_grader(FORK_4_X_1_5_GIB, [{}], [{}], config)[0]
    plan = sandbox_bounds.plan(config)
    print(f"{plan.describe()}: outcome {outcome.score}/{outcome.details}, cgroup peak "
          f"{[p // MIB for p in cgroup_peaks if p]} MiB, peak sandbox RSS {seen.peak_rss // MIB} MiB, host "
          f"MemAvailable drop {seen.host_drop // MIB} MiB (unbounded: 4 x 1.5 GiB = 6 GiB)")
    # Unbounded, all 4 succeed and the host loses 6 GiB; bounded, none can reach 1.5 GiB.
    assert outcome.score == 0.0 or outcome.error is not None, outcome
    if plan.mechanism == "rlimit":
        assert not cgroup_peaks
        # Each process is capped at 126 MiB of address space: the children fail at once.
        assert seen.peak_rss <= config.total_memory_bytes, seen.peak_rss // MIB
    else:
        assert len(cgroup_peaks) == 1 and cgroup_peaks[0] <= config.total_memory_bytes, cgroup_peaks
        # Summed RSS is sampled one process at a time while the OOM killer frees a child and another
        # grows, so it can overshoot the true total by about one child: still far below 6 GiB.
        assert seen.peak_rss <= 2 * config.total_memory_bytes, seen.peak_rss // MIB


@needs_bwrap
@pytest.mark.parametrize("bound", BOUNDS)
def test_fork_bomb_is_bounded(bound):
    config = SandboxConfig(**BASE, bound=bound)
    cap = sandbox_bounds.plan(config).rlimit_nproc
    with DescendantSampler() as seen:
        outcome = run_python_grader(FORK_BOMB, [{}], [{}], config)[0]
    assert outcome.error is None and 1 <= outcome.score < cap, outcome
    # The grader's processes plus bwrap's own (and the wrapper that joins the cgroup, which execs it).
    assert seen.peak_count <= cap + 2, seen.peak_count
    assert not _sandbox_cgroups_left()


def test_rlimit_plan_keeps_processes_times_address_space_within_the_total():
    config = SandboxConfig(**BASE, bound="rlimit")
    plan = sandbox_bounds.plan(config)
    assert plan.mechanism == "rlimit" and plan.rlimit_nproc == config.rlimit_processes == 4
    assert plan.rlimit_nproc * plan.rlimit_as + config.tmp_bytes <= config.total_memory_bytes
    default = sandbox_bounds.plan(SandboxConfig(bound="rlimit"))
    assert default.rlimit_nproc * default.rlimit_as <= 2 * 1024**3


def test_the_mechanism_in_use_is_named():
    plan = sandbox_bounds.plan(SandboxConfig(**BASE))
    assert plan.mechanism == HERE and plan.mechanism in sandbox_bounds.MECHANISMS
    assert plan.describe().startswith(plan.mechanism)


def test_bound_cgroup_fails_closed_without_a_usable_cgroup(tmp_path):
    config = SandboxConfig(**BASE, bound="cgroup", cgroup_parent=str(tmp_path / "absent"))
    reason = sandbox.unavailable_reason(config)
    assert reason is not None and "cgroup" in reason
    outcome = run_python_grader("def grade(s, i):\n    return 1\n", [{}], [{}], config)[0]
    assert outcome.error == sandbox.SERVER_ERROR and outcome.details == "sandbox_unavailable"


@pytest.mark.parametrize("field, value", [("total_memory_bytes", 2 * 1024**3 + 1), ("total_memory_bytes", 64 * MIB),
                                          ("bound", "none"), ("rlimit_processes", 1)])
def test_config_refuses_bad_bounds(field, value):
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**{field: value})


def _sandbox_cgroups_left() -> list[str]:
    found = sandbox_bounds.detected()
    return [name for parent in found.parents for name in os.listdir(parent)
            if name.startswith(f"{sandbox_bounds.CGROUP_PREFIX}{os.getpid()}-")]


# --- finding cgroups (fake /proc text and fake cgroup trees) --------------------------------------


MOUNTINFO_V1 = """\
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
35 30 0:31 / {root}/memory rw - cgroup cgroup rw,memory
36 30 0:32 / {root}/pids rw - cgroup cgroup rw,pids
37 30 0:33 / {root}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
38 30 0:34 / {root}/unified rw - cgroup2 cgroup2 rw
"""


def test_own_cgroup_dirs_on_v1(tmp_path):
    for d in ("memory/svc/a", "pids", "unified"):
        (tmp_path / d).mkdir(parents=True)
    dirs = sandbox_bounds.own_cgroup_dirs(MOUNTINFO_V1.format(root=tmp_path),
                                          "5:pids:/\n4:memory:/svc/a\n2:cpu,cpuacct:/\n0::/\n")
    assert dirs == {"memory": str(tmp_path / "memory/svc/a"), "pids": str(tmp_path / "pids"),
                    "v2": str(tmp_path / "unified")}


def test_own_cgroup_dir_under_a_bind_mounted_subtree(tmp_path):
    (tmp_path / "x").mkdir()
    mountinfo = f"40 30 0:40 /system.slice/svc {tmp_path} rw - cgroup2 cgroup2 rw\n"
    assert sandbox_bounds.own_cgroup_dirs(mountinfo, "0::/system.slice/svc/x\n") == {"v2": str(tmp_path / "x")}
    assert sandbox_bounds.own_cgroup_dirs(mountinfo, "0::/elsewhere\n") == {}


def fake_v2(path: Path, controllers="cpu memory pids", enabled="", procs="") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(enabled + "\n")
    (path / "cgroup.procs").write_text(procs)
    return path


def test_v2_delegated_parent_gets_one_cgroup_per_launch(tmp_path):
    parent = fake_v2(tmp_path / "delegated")
    found = sandbox_bounds.detect("auto", str(parent))
    assert found == sandbox_bounds.Detected("cgroup-v2", (str(parent),))
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids"  # enabled for the children
    plan = sandbox_bounds.Plan("cgroup-v2", found.parents, 512 * MIB, 16, 512 * MIB, 16)
    cgroup = sandbox_bounds.LaunchCgroup(plan)
    (launch_dir,) = cgroup.dirs
    assert Path(launch_dir, "memory.max").read_text() == str(512 * MIB)
    assert Path(launch_dir, "memory.swap.max").read_text() == "0"
    assert Path(launch_dir, "pids.max").read_text() == "17"  # + bwrap's own process
    argv = cgroup.wrap(["bwrap", "--", "python"])
    assert argv[:2] == ["/bin/sh", "-c"] and argv[-3:] == ["bwrap", "--", "python"]
    assert argv[4:6] == ["1", os.path.join(launch_dir, "cgroup.procs")]


def test_v2_without_the_memory_controller_falls_back_to_rlimit(tmp_path):
    parent = fake_v2(tmp_path / "nomem", controllers="cpu pids")
    found = sandbox_bounds.detect("auto", str(parent))
    assert found.mechanism == "rlimit" and "memory controller" in found.reason


def test_rlimit_bound_never_uses_a_cgroup(tmp_path):
    assert sandbox_bounds.detect("rlimit", str(fake_v2(tmp_path / "d"))).mechanism == "rlimit"


def test_join_wrapper_really_joins_before_exec(tmp_path):
    """The /bin/sh wrapper writes "0" into each cgroup.procs given, then execs the command."""
    import subprocess

    procs = [tmp_path / "a.procs", tmp_path / "b.procs"]
    for p in procs:
        p.write_text("")
    argv = ["/bin/sh", "-c", sandbox_bounds._JOIN_SCRIPT, "sh", "2", *map(str, procs), "echo", "ran"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out == "ran\n" and all(p.read_text() == "0\n" for p in procs)
    bad = ["/bin/sh", "-c", sandbox_bounds._JOIN_SCRIPT, "sh", "1", str(tmp_path / "no/such/procs"), "echo", "ran"]
    failed = subprocess.run(bad, capture_output=True, text=True)
    assert failed.returncode == sandbox_bounds.EX_CGROUP and failed.stdout == ""


def busy_until_delegated(monkeypatch, parent: Path):
    """Make writes to parent's subtree_control fail with EBUSY while processes live in parent (the
    kernel's v2 "no internal processes" rule), as a regular file cannot."""
    import errno

    real_write = sandbox_bounds._write

    def write(path, value):
        if path == str(parent / "cgroup.subtree_control") and (parent / "cgroup.procs").read_text().strip():
            raise OSError(errno.EBUSY, "Device or resource busy")
        if path.endswith("cgroup.procs") and Path(path).parent.parent == parent:  # a move out of parent
            (parent / "cgroup.procs").write_text("")
        real_write(path, value)

    monkeypatch.setattr(sandbox_bounds, "_write", write)


def test_v2_service_alone_in_its_cgroup_moves_into_a_leaf(tmp_path, monkeypatch):
    parent = fake_v2(tmp_path / "svc", procs=f"{os.getpid()}\n")
    busy_until_delegated(monkeypatch, parent)
    directory, why = sandbox_bounds._v2_parent(str(parent), explicit=False)
    assert directory == str(parent) and why is None
    assert (parent / sandbox_bounds.SERVICE_LEAF / "cgroup.procs").read_text() == str(os.getpid())
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_v2_never_moves_other_processes(tmp_path, monkeypatch):
    parent = fake_v2(tmp_path / "shared", procs=f"{os.getpid()}\n1\n")
    busy_until_delegated(monkeypatch, parent)
    directory, why = sandbox_bounds._v2_parent(str(parent), explicit=False)
    assert directory is None and "other processes" in why
    assert not (parent / sandbox_bounds.SERVICE_LEAF).exists()
