"""The "Bad input" figures of RELIABILITY.md (`make reliability`):

    python -m tools.reliability.figures [--json PATH] [--skip-http]

1. ml level: every file of the malformed corpus (tools/reliability/malformed.py) through
   ml.data.validate_file: how many are rejected with the expected (line, field, code), how many
   good examples in them were still read, the time, the peak traced memory and the RSS growth.
2. Huge inputs, each validated in a fresh process (so its RSS growth is its own): a 50 MB line,
   million-deep nestings, the largest json.loads blow-up per byte we found in a 4 MB line, a line with
   hundreds of thousands of problems, and a 20 MB valid file with and without keeping examples.
3. HTTP level: every file (not the sample `make test` uses) uploaded through the API with the
   openai SDK, a job created and failed by the worker; checks as tools/reliability/malformed_http.py
   (shared with tests/reliability/test_malformed_http.py, which also checks the job object against
   OpenAI's schema) plus the dashboard report's exact (line, field, code); counts 5xx.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path

MiB = 1024 * 1024


def _status_mib(field: str) -> float | None:
    """One memory line of /proc/self/status (kB there) in MiB; None where there is no such file."""
    try:
        for row in Path("/proc/self/status").read_text().splitlines():
            if row.startswith(field + ":"):
                return int(row.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """Peak RSS so far (MiB): VmHWM, which reset_peak_rss() resets; else ru_maxrss."""
    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def current_rss_mib() -> float:
    now = _status_mib("VmRSS")
    return now if now is not None else rss_mib()


def reset_peak_rss() -> None:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS, so the peak that
    follows is this measurement's own (not an import's)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def ml_level(cases, tmp: Path) -> dict:
    from modelmill.ml import data
    from tools.reliability.malformed import failures

    path = tmp / "case.jsonl"
    wrong, kept, expected = {}, 0, 0
    by_category: Counter = Counter()
    reset_peak_rss()
    rss0, t0 = current_rss_mib(), time.perf_counter()
    for case in cases:
        path.write_bytes(case.data)
        report = data.validate_file(path, case.method)
        if problems := failures(case, report):
            wrong[case.name] = problems
        else:
            by_category[case.category] += 1
        kept += len(report.examples)
        expected += case.n_good
    seconds, rss_growth = time.perf_counter() - t0, rss_mib() - rss0
    tracemalloc.start()
    for case in cases:
        path.write_bytes(case.data)
        data.validate_file(path, case.method)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"files": len(cases), "rejected_as_expected": len(cases) - len(wrong), "wrong": wrong,
            "by_category": dict(sorted(Counter(c.category for c in cases).items())),
            "by_category_ok": dict(sorted(by_category.items())),
            "by_method": dict(Counter(c.method for c in cases)),
            "codes": len({c.code for c in cases}), "good_examples_expected": expected, "good_examples_kept": kept,
            "seconds": round(seconds, 2), "rss_growth_mib": round(rss_growth, 1),
            "traced_peak_mib": round(peak / MiB, 1)}


# ------------------------------------------------------------------------------------------- huge inputs


def _good(n: int = 11) -> bytes:
    from tools.reliability.malformed import good_objects

    return "".join(json.dumps(o) + "\n" for o in good_objects("supervised", n)).encode()


def _write_huge(name: str, path: Path) -> str:
    """Write one huge input; returns what it is."""
    deep = 1_000_000
    with open(path, "wb") as f:
        f.write(_good())
        if name == "line_50mb":
            f.write(b'{"messages": [{"role": "user", "content": "' + b"x" * (50 * MiB) + b'"}]}\n')
            return "one 50 MB line among 11 valid lines"
        if name == "nesting_1e6":
            f.write(b"[" * deep + b"]" * deep + b"\n")
            return "a line nesting 1,000,000 arrays"
        if name == "arguments_nesting_1e6":
            args = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[" * deep}}
            f.write(json.dumps({"messages": [{"role": "user", "content": "x"},
                                             {"role": "assistant", "tool_calls": [args]}]}).encode() + b"\n")
            return "tool-call arguments nesting 1,000,000 arrays"
        if name == "many_objects_4mb":
            n = (4 * MiB - 64) // 3
            f.write(b'{"messages": [], "x": [' + b"{}," * n + b"{}]}\n")
            return f"a 4 MB line of {n + 1:,} empty objects (json.loads' largest blow-up per byte we found)"
        if name == "many_problems_4mb":
            n = (4 * MiB - 64) // 13
            f.write(b'{"messages": [' + b'{"role":"x"},' * n + b'{"role":"x"}]}\n')
            return f"a 4 MB line of {n + 1:,} messages with an unknown role (one problem each)"
        if name.startswith("valid_20mb"):
            line = _good(1)
            for _ in range(20 * MiB // len(line)):
                f.write(line)
            return "a 20 MB file of valid lines" + (", examples kept (keep_examples=True)"
                                                    if name.endswith("_keep") else ", examples not kept")
    raise ValueError(name)


HUGE = ["line_50mb", "nesting_1e6", "arguments_nesting_1e6", "many_objects_4mb", "many_problems_4mb",
        "valid_20mb_nokeep", "valid_20mb_keep"]


def _measure_one(name: str, path: str) -> None:
    """In a fresh process: validate once for time and RSS growth, once more for traced memory."""
    from modelmill.ml import data

    keep = name.endswith("_keep")
    reset_peak_rss()
    rss0, t0 = current_rss_mib(), time.perf_counter()
    report = data.validate_file(Path(path), keep_examples=keep)
    seconds, growth = time.perf_counter() - t0, rss_mib() - rss0
    codes = Counter(p.code for p in report.problems)
    del report
    tracemalloc.start()
    data.validate_file(Path(path), keep_examples=keep)
    _, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"seconds": round(seconds, 2), "rss_growth_mib": round(growth, 1),
                      "traced_peak_mib": round(peak / MiB, 1), "codes": dict(codes)}))


def huge_inputs(tmp: Path) -> dict:
    out = {}
    for name in HUGE:
        path = tmp / f"{name}.jsonl"
        what = _write_huge(name, path)
        run = subprocess.run([sys.executable, "-m", "tools.reliability.figures", "--measure", name, str(path)],
                             capture_output=True, text=True, check=True)
        out[name] = {"what": what, "bytes": path.stat().st_size, **json.loads(run.stdout.strip().splitlines()[-1])}
        path.unlink()
        print(f"  {name}: {out[name]}", flush=True)
    return out


# ------------------------------------------------------------------------------------------- HTTP level


def http_level(cases, tmp: Path) -> dict:
    from fastapi.testclient import TestClient
    from openai import OpenAI

    from modelmill.settings import Settings
    from modelmill.service.api.app import create_app
    from modelmill.service.store import open_store
    from tools.reliability.malformed_http import check_job, run_worker, submit

    settings = Settings(home=tmp / "home", lease_seconds=30.0, heartbeat_seconds=5.0,
                        max_upload_bytes=8 * MiB).ensure_dirs()
    store = open_store(settings)
    statuses: Counter = Counter()
    t0 = time.perf_counter()
    with TestClient(create_app(settings, store=store)) as http:
        http.event_hooks["response"].append(lambda r: statuses.update([r.status_code]))
        sdk = OpenAI(base_url=str(http.base_url) + "/v1", api_key="unused", http_client=http, max_retries=0)
        wrong = {}
        for start in range(0, len(cases), 200):  # batches keep the queue short
            batch = cases[start:start + 200]
            submitted = [(case, *submit(sdk, case)) for case in batch]
            run_worker(settings, store)
            for case, file_id, job_id in submitted:
                if problems := check_job(sdk, http, case, file_id, job_id, with_report=True):
                    wrong[case.name] = problems
            print(f"  http: {start + len(batch)}/{len(cases)} files, {len(wrong)} wrong", flush=True)
    store.close()
    return {"files": len(cases), "jobs_failed_as_expected": len(cases) - len(wrong), "wrong": wrong,
            "responses": sum(statuses.values()), "statuses": dict(sorted(statuses.items())),
            "server_errors": sum(n for s, n in statuses.items() if s >= 500),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--skip-http", action="store_true", help="only the ml-level and huge-input figures")
    ap.add_argument("--measure", nargs=2, metavar=("NAME", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        _measure_one(*args.measure)
        return 0
    from tools.reliability.malformed import generate

    cases = generate()
    figures = {"date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print(f"ml level: {len(cases)} files", flush=True)
        figures["ml"] = ml_level(cases, tmp)
        print(f"  {({k: v for k, v in figures['ml'].items() if k != 'wrong'})}", flush=True)
        print("huge inputs", flush=True)
        figures["huge"] = huge_inputs(tmp)
        if not args.skip_http:
            print(f"http level: {len(cases)} files", flush=True)
            figures["http"] = http_level(cases, tmp)
            print(f"  {({k: v for k, v in figures['http'].items() if k != 'wrong'})}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=1))
    bad = figures["ml"]["wrong"] or figures.get("http", {}).get("wrong") or figures.get("http", {}).get("server_errors")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
