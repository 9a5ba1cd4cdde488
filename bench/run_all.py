"""`make bench`: run every issue-9 bench in sequence, then write BENCHMARKS.md's summary section.

    python bench/run_all.py [--only first_step,gpu] [--out bench/out] [--summary-only] [--markdown PATH]

Each bench runs as `python bench/bench_<name>.py --json bench/out/<name>.json` (plus `--budget-s`
when its --help offers it), under a wall-clock limit (BENCHES: the limits add up to under 30
minutes on a 2-core CPU with no GPU). A script that does not exist yet is reported as missing; one
that fails or runs out of time is reported as such, and the run goes on. Its old JSON file is
deleted first, so the summary never shows stale figures as new.

The summary (section `bench_summary`, written by write_summary) lists every row of every
bench/out/*.json that follows the Bench JSON contract (bench/README.md), one line per target
(met / missed), and notes for benches that were skipped (bench_gpu without CUDA: "No GPU was
lent"), missing, failed or timed out.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


@dataclass(frozen=True)
class Bench:
    name: str  # bench/bench_<name>.py, writing bench/out/<name>.json
    limit_s: int  # wall-clock limit; the script is stopped after it
    budget_s: int | None = None  # passed as --budget-s when the script accepts it (it then stops starting repeats)


# In run order. Limits (seconds) sum to 1,800 s = 30 min on a machine without CUDA (bench_gpu then
# gets NO_CUDA_LIMIT_S); a budget leaves each script room to finish the repeat it is in before its
# limit. Seen on 2 quiet CPU cores (2026-11-21): job_overhead 137 s, sft_efficiency 175 s, memory
# 117 s, serving more than 240 s (3 repeats of 64-token requests), first_step 65 s, rollouts 82 s.
# first_step's limit went from 300 s to 180 s (it took 65 s) to make room for structured (issue 16:
# one repeat of 64-token requests on SmolLM2 plus its unconstrained reference fit in the limit).
BENCHES = (
    Bench("job_overhead", 240, budget_s=170),
    Bench("sft_efficiency", 300, budget_s=220),
    Bench("memory", 240, budget_s=160),
    Bench("serving", 420),
    Bench("first_step", 180, budget_s=110),
    Bench("gpu", 600),
    Bench("rollouts", 180),
    Bench("structured", 180, budget_s=70),
)
NO_CUDA_LIMIT_S = 60  # bench_gpu's limit when it will only find there is no CUDA device


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": os.getloadavg()[0],
            "date": dt.date.today().isoformat()}


def _has_cuda() -> bool:
    """nvidia-smi lists a GPU (cheaper than importing torch just to ask)."""
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def run_bench(bench: Bench, out_dir: Path) -> str:
    """Run one bench script; its status: "ok", "missing", "failed (exit N)" or "timed out after N s"."""
    script = HERE / f"bench_{bench.name}.py"
    if not script.exists():
        print(f"== bench_{bench.name}: missing", flush=True)
        return "missing"
    json_path = out_dir / f"{bench.name}.json"
    json_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(script), "--json", str(json_path)]
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True).stdout
    if bench.budget_s and "--budget-s" in help_text:
        cmd += ["--budget-s", str(bench.budget_s)]
    limit = bench.limit_s if bench.name != "gpu" or _has_cuda() else NO_CUDA_LIMIT_S
    print(f"== bench_{bench.name} (limit {limit} s): {' '.join(cmd[1:])}", flush=True)
    started = time.monotonic()
    # Its own process group, so a timeout also stops what the bench started (servers, child runs).
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever of the group is still there
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return f"timed out after {limit} s"
    finally:
        print(f"== bench_{bench.name}: {time.monotonic() - started:.0f} s", flush=True)
    if code != 0:
        return f"failed (exit {code})"
    return "ok" if json_path.exists() else "ok, but wrote no JSON"


# ---------------------------------------------------------------- the summary


def load_results(out_dir: Path) -> dict[str, dict]:
    """bench name -> its JSON document, for every file under out_dir that is a Bench JSON (rows, or a skip)."""
    docs = {}
    for path in sorted(out_dir.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and ("rows" in doc or "skipped" in doc):
            docs[path.stem] = doc
    return docs


def _num(x) -> str:
    if x is None:
        return "-"
    x = float(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def summary_markdown(docs: dict[str, dict], statuses: dict[str, str], machine: dict) -> str:
    lines = [f"`make bench` (`bench/run_all.py`), {machine['date']}, on {machine['cpu']}, {machine['cores']} logical "
             f"CPUs, load average {machine['load_average']:.2f} at the start. Each bench's own section below has its "
             "method and notes; ratios are always > 1 = ModelMill better.", "",
             "| bench | what | unit | baseline median | ModelMill median | ModelMill min-max | ratio | target | met |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    targets, notes = [], []
    for name, doc in docs.items():
        if "skipped" in doc:
            notes.append(f"bench_{name}: skipped ({doc['skipped']}).")
            continue
        for r in doc.get("rows", []):
            if not isinstance(r, dict) or "what" not in r:
                continue
            met = {True: "met", False: "**missed**", None: "-"}.get(r.get("met"), "-")
            lo, hi = (r.get("modelmill_spread") or [None, None])[:2]
            lines.append(f"| {name} | {r['what']} | {r.get('unit', '')} | {_num(r.get('baseline_median'))} | "
                         f"{_num(r.get('modelmill_median'))} | {_num(lo)}-{_num(hi)} | {_num(r.get('ratio'))}x | "
                         f"{r.get('target') or '-'} | {met} |")
            if r.get("target"):
                verdict = {True: "met", False: "MISSED"}.get(r.get("met"), "not judged")
                targets.append(f"- {verdict}: {name}, {r['what']}: target {r['target']}, measured ModelMill "
                               f"{_num(r.get('modelmill_median'))} {r.get('unit', '')}, ratio {_num(r.get('ratio'))}x.")
        if doc.get("date") and doc["date"] != machine["date"]:
            notes.append(f"bench_{name}: figures from an earlier run ({doc['date']}).")
    if not docs.get("gpu") or "skipped" in docs.get("gpu", {}):
        notes.append("No GPU was lent: bench_gpu did not measure (GPU figures need a CUDA device; "
                     "`python bench/bench_gpu.py --cpu-smoke` checks its code path on CPU).")
    for name, status in statuses.items():
        if status != "ok":
            notes.append(f"bench_{name}: {status}.")
    lines += ["", "Targets:", *(targets or ["- none recorded"])]
    if notes:
        lines += ["", "Notes:", *[f"- {n}" for n in notes]]
    return "\n".join(lines)


def write_summary(out_dir: Path, statuses: dict[str, str], machine: dict, md_path: Path | None = None) -> str:
    """Write BENCHMARKS.md's `bench_summary` section from out_dir's JSON files; return its body."""
    sys.path.insert(0, str(HERE))
    from benchmarks_md import BENCHMARKS, write_section

    body = summary_markdown(load_results(out_dir), statuses, machine)
    write_section("bench_summary", "Summary (make bench)", body, path=md_path or BENCHMARKS)
    return body


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated bench names (default: all of them)")
    p.add_argument("--out", default=str(OUT), help="where the JSON files go")
    p.add_argument("--summary-only", action="store_true", help="only rewrite the summary from the JSON files")
    p.add_argument("--markdown", help="write the summary section into this file instead of BENCHMARKS.md")
    args = p.parse_args(argv)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    wanted = set(args.only.split(",")) if args.only else {b.name for b in BENCHES}
    statuses: dict[str, str] = {}
    started = time.monotonic()
    if not args.summary_only:
        for bench in BENCHES:
            if bench.name in wanted:
                statuses[bench.name] = run_bench(bench, out_dir)
    print(write_summary(out_dir, statuses, machine, Path(args.markdown) if args.markdown else None))
    print(f"make bench: {time.monotonic() - started:.0f} s; statuses: {statuses}")


if __name__ == "__main__":
    main()
