"""Issue 17's sandbox and grader probes, long versions (the fast ones are in make test:
tests/ml/graders/test_sandbox_bounds.py, tests/service/test_grader_concurrency.py).

    python -m tools.reliability.sandbox_probe [--graders N] [--sleep S] [--mcp-jobs M] [--json PATH]

1. Memory as a whole: a python grader forks 4 children that each allocate (and touch) 1.5 GiB, with
   the default SandboxConfig (2 GiB). Prints, per bound mechanism this host offers, how many children
   got their 1.5 GiB, the peak RSS of all the sandbox's processes and the host's MemAvailable drop.
2. Fork bomb: every process forks until refused; the peak number of sandbox processes.
3. Graders vs metadata: N concurrent graders/run calls with a python grader sleeping S seconds
   against a live server (in this process, on a temp MODELMILL_HOME), and GET /v1/files latency
   from another client meanwhile, plus the status codes the graders got (200 / 429).
4. MCP probes vs metadata: M concurrent agentic RFT job creations whose MCP server never answers
   (startup_timeout_seconds S), GET /v1/files latency meanwhile and their statuses (400 / 429).

Only public APIs and HTTP are used, so the same script measures the code before this change
(where SandboxConfig has no `bound` it reports "per-process rlimits only").
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

MIB = 1024**2

# 4 children of 1.5 GiB each (pages touched); returns how many children managed it.
FORK_4_X_1_5_GIB = """
def grade(sample, item):
    import os
    kids = []
    for _ in range(4):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            try:
                block = bytearray(b"\\x01") * (1536 * 1024 * 1024)
                os._exit(0)
            except BaseException:
                os._exit(3)
        kids.append(pid)
    done = 0
    for pid in kids:
        done += os.waitpid(pid, 0)[1] == 0
    return done
"""

# Every process keeps forking until the kernel refuses; the first one returns its own fork count.
FORK_BOMB = """
def grade(sample, item):
    import os, time
    me, forks = os.getpid(), 0
    for _ in range(64):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid:
            forks += 1
    if os.getpid() != me:
        time.sleep(10)
        os._exit(0)
    time.sleep(0.5)
    return forks
"""


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


class DescendantSampler:
    """Samples, every few ms, the number and total RSS of this process's descendants started after it
    (the sandbox: servers a test session started earlier are children too, and are not counted), and
    the host's MemAvailable."""

    def __init__(self):
        self.before = {int(e) for e in os.listdir("/proc") if e.isdigit()}
        self.peak_rss = self.peak_count = 0
        self.min_available = self.start_available = mem_available()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def host_drop(self) -> int:
        return self.start_available - self.min_available

    def _run(self):
        me = os.getpid()
        while not self._stop.is_set():
            parents, rss = {}, {}
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        fields = dict(line.split(":", 1) for line in Path(f"/proc/{entry}/status").read_text()
                                      .splitlines() if ":" in line)
                        parents[int(entry)] = int(fields["PPid"])
                        rss[int(entry)] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
                    except (OSError, KeyError, ValueError):
                        pass
            mine = {me}
            for _ in range(8):  # a few generations deep
                mine |= {pid for pid, ppid in parents.items() if ppid in mine}
            mine.discard(me)
            mine -= self.before
            self.peak_count = max(self.peak_count, len(mine))
            self.peak_rss = max(self.peak_rss, sum(rss.get(pid, 0) for pid in mine))
            self.min_available = min(self.min_available, mem_available())
            time.sleep(0.005)


# -- 1 and 2: the sandbox ------------------------------------------------------------------------


def sandbox_figures() -> list[dict]:
    from modelmill.ml.graders.sandbox import SandboxConfig, run_python_grader
    from modelmill.settings import Settings

    cgroup_parent = Settings.from_env().sandbox_cgroup  # MODELMILL_SANDBOX_CGROUP, as the service reads it
    try:
        from modelmill.ml.graders.sandbox import bounds as sandbox_bounds
        bounds = (["auto", "rlimit"] if sandbox_bounds.detect(cgroup_parent=cgroup_parent).mechanism != "rlimit"
                  else ["rlimit"])
    except ImportError:
        sandbox_bounds, bounds = None, [None]
    peaks: list = []
    if sandbox_bounds is not None:  # record each launch cgroup's own high-water mark before it goes
        real_destroy = sandbox_bounds.LaunchCgroup.destroy

        def destroy(self):
            peaks.append(self.peak_bytes())
            real_destroy(self)

        sandbox_bounds.LaunchCgroup.destroy = destroy
    rows = []
    for bound in bounds:
        config = SandboxConfig() if bound is None else SandboxConfig(bound=bound, cgroup_parent=cgroup_parent)
        label = "per-process rlimits only" if bound is None else sandbox_bounds.plan(config).describe()
        for name, source in (("fork 4 x 1.5 GiB", FORK_4_X_1_5_GIB), ("fork bomb", FORK_BOMB)):
            started = time.perf_counter()
            peaks.clear()
            with DescendantSampler() as seen:
                outcome = run_python_grader(source, [{}], [{}], config)[0]
            row = {"probe": name, "bound": label, "score": outcome.score, "error": outcome.details,
                   "seconds": round(time.perf_counter() - started, 2), "peak_sandbox_rss_mib": seen.peak_rss // MIB,
                   "host_available_drop_mib": seen.host_drop // MIB, "peak_sandbox_processes": seen.peak_count,
                   "cgroup_peak_mib": [p // MIB for p in peaks if p] or None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# -- 3: graders vs metadata on a live server -----------------------------------------------------------


def _live_server():
    """(uvicorn.Server, base URL): the API on a free port of 127.0.0.1 in a thread of this process, on a
    temp MODELMILL_HOME, started. Stop it with server.should_exit = True."""
    import uvicorn

    from modelmill.service.api.app import create_app
    from modelmill.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="modelmill-probe-"))
    os.environ["MODELMILL_HOME"] = str(home)
    app = create_app(Settings(home=home).ensure_dirs())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{port}"


async def _files_timings(base: str, n: int = 10) -> list[float]:
    """Seconds each of n GET /v1/files took, one after another, from a client of its own."""
    import httpx

    timings = []
    async with httpx.AsyncClient(base_url=base, timeout=600) as other:
        for _ in range(n):
            started = time.perf_counter()
            await other.get("/v1/files")
            timings.append(time.perf_counter() - started)
    return timings


def graders_figures(n: int, sleep_s: float) -> dict:
    server, base = _live_server()
    grader = {"type": "python", "name": "slow",
              "source": f"import time\ndef grade(sample, item):\n    time.sleep({sleep_s})\n    return 1.0\n"}
    timings, codes, _, drain = _flood(base, n, "/v1/fine_tuning/alpha/graders/run",
                                      {"grader": grader, "model_sample": "x", "item": {}})
    server.should_exit = True
    row = {"probe": f"GET /v1/files with {n} graders/run (python, sleep {sleep_s}s) in flight",
           "files_p50_s": round(statistics.median(timings), 3), "files_max_s": round(max(timings), 3),
           "grader_statuses": codes, "graders_drain_s": round(drain, 1)}
    print(json.dumps(row), flush=True)
    return row


def _flood(base: str, n: int, path: str, body: dict) -> tuple[list[float], dict, float, float]:
    """POST `body` to `path` n times at once and, once they have all arrived, time GET /v1/files from
    another client. Returns (the GET timings, the POSTs' status counts, seconds from the first POST
    until all answered, seconds from the end of the GETs until all answered)."""
    import httpx

    async def scenario():
        async with httpx.AsyncClient(base_url=base, timeout=600, limits=httpx.Limits(max_connections=n + 5)) as c:
            started = time.perf_counter()
            posts = [asyncio.create_task(c.post(path, json=body)) for _ in range(n)]
            await asyncio.sleep(1.0)  # let them all arrive
            timings = await _files_timings(base)
            drain_started = time.perf_counter()
            results = await asyncio.gather(*posts, return_exceptions=True)
            done = time.perf_counter()
        codes = collections.Counter(r.status_code if hasattr(r, "status_code") else type(r).__name__ for r in results)
        return timings, dict(codes), done - started, done - drain_started

    return asyncio.run(scenario())


def mcp_figures(n: int, hang_s: float) -> dict:
    """N agentic RFT job creations at once, each with an MCP server that never answers initialize
    (startup_timeout_seconds hang_s): their statuses (400 once the server times out, 429 when no
    graders' slot is free in time: MCP start-ups at creation share the graders' executor) and GET
    /v1/files latency from another client meanwhile."""
    import httpx

    server, base = _live_server()
    train = httpx.post(base + "/v1/files", files={"file": ("t.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n')},
                       data={"purpose": "fine-tune"}, timeout=60).json()["id"]
    env = {"tools": [{"type": "mcp", "name": "db", "source": "import time\ntime.sleep(600)\n",
                      "startup_timeout_seconds": hang_s}]}
    body = {"model": "modelmill-tiny", "training_file": train, "method": {"type": "reinforcement", "reinforcement": {
        "grader": {"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "a",
                   "operation": "eq"}, "environment": env}}}

    timings, codes, wall, _ = _flood(base, n, "/v1/fine_tuning/jobs", body)
    server.should_exit = True
    row = {"probe": f"GET /v1/files with {n} agentic job creations (an MCP server hanging {hang_s:g}s) in flight",
           "files_p50_s": round(statistics.median(timings), 3), "files_max_s": round(max(timings), 3),
           "create_statuses": codes, "creates_wall_s": round(wall, 1)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graders", type=int, default=40, help="concurrent graders/run calls")
    parser.add_argument("--sleep", type=float, default=5.0, help="seconds each grader sleeps")
    parser.add_argument("--mcp-jobs", type=int, default=20, help="concurrent agentic job creations (MCP probe)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    figures = {"sandbox": sandbox_figures(), "graders": graders_figures(args.graders, args.sleep),
               "mcp_probe": mcp_figures(args.mcp_jobs, args.sleep)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
