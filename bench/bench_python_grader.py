"""Python-grader throughput: the bwrap sandbox (run_python_grader) against a bare, unsandboxed
`python -I -S harness.py` subprocess doing the same work (same harness, same request bytes),
measured alternately in the same run.

    .venv/bin/python bench/bench_python_grader.py [--samples 2000] [--reps 7] [--json out.json]

Prints samples/s for each (median, min, max, spread), the ratio, and the start-up latency of one
single-sample batch (p50) for each. Target: >= 300 samples/s sandboxed for a stdlib grader.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from modelmill.ml.graders import sandbox
from modelmill.ml.graders.sandbox import SandboxConfig, backends, bounds, run_python_grader
from modelmill.ml.graders.sandbox.run import _request_bytes

# A typical stdlib grader: token F1 plus a difflib similarity against the reference.
GRADER = '''
import difflib, re

def _tokens(text):
    return re.findall(r"\\w+", text.lower())

def grade(sample, item):
    out, ref = _tokens(sample["output_text"]), _tokens(item["reference"])
    common = sum(min(out.count(t), ref.count(t)) for t in set(out))
    if not out or not ref or not common:
        f1 = 0.0
    else:
        p, r = common / len(out), common / len(ref)
        f1 = 2 * p * r / (p + r)
    ratio = difflib.SequenceMatcher(None, sample["output_text"], item["reference"]).ratio()
    return 0.5 * f1 + 0.5 * ratio
'''

TARGET = 300.0


def make_batch(n: int) -> tuple[list[dict], list[dict]]:
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing".split()
    samples, items = [], []
    for k in range(n):
        out = " ".join(words[(k + j) % len(words)] for j in range(12 + k % 7))
        ref = " ".join(words[(2 * k + j) % len(words)] for j in range(12))
        samples.append({"output_text": out, "output_json": {}, "output_tools": [], "choices": []})
        items.append({"reference": ref, "id": k})
    return samples, items


def run_bare(config: SandboxConfig, samples: list[dict], items: list[dict]) -> list[float | None]:
    """The same harness and request, as a plain `python -I -S` child: no bwrap, no uid drop, no watchdog."""
    sample_json = [json.dumps(s, separators=(",", ":")) for s in samples]
    item_json = [json.dumps(i, separators=(",", ":")) for i in items]
    bare = SandboxConfig(**{**config.__dict__, "backend": "unsafe-subprocess"})
    request = _request_bytes(GRADER, sample_json, item_json, 0, bare, time.monotonic() + 600, bounds.plan(bare))
    python, _ = backends._interpreter(config)
    proc = subprocess.run([python, "-I", "-S", "-B", str(sandbox.HARNESS)], input=request, capture_output=True,
                          env={}, check=True, timeout=600)
    scores = []
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if "i" in msg:
            scores.append(msg.get("score"))
    return scores


def run_sandboxed(config: SandboxConfig, samples: list[dict], items: list[dict]) -> list[float | None]:
    return [o.score for o in run_python_grader(GRADER, samples, items, config)]


def timed(fn, *args) -> tuple[float, list]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "spread_pct": 100 * (max(values) - min(values)) / statistics.median(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="samples per batch (default 2000)")
    parser.add_argument("--reps", type=int, default=7, help="repetitions of each (default 7)")
    parser.add_argument("--latency-reps", type=int, default=15, help="single-sample batches for start-up latency")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    config = SandboxConfig(wall_seconds=10.0)
    reason = sandbox.unavailable_reason(config)
    if reason is not None:
        print(f"bwrap sandbox unavailable: {reason}", file=sys.stderr)
        return 2
    samples, items = make_batch(args.samples)

    # Warm-up (page cache, .pyc of the stdlib) and a correctness check: both give the same scores.
    a, b = run_sandboxed(config, samples, items), run_bare(config, samples, items)
    if a != b or any(s is None for s in a):
        print("sandboxed and bare scores differ", file=sys.stderr)
        return 1

    rates = {"sandboxed": [], "bare": []}
    for rep in range(args.reps):
        order = [("sandboxed", run_sandboxed), ("bare", run_bare)]
        if rep % 2:
            order.reverse()
        for name, fn in order:
            seconds, _ = timed(fn, config, samples, items)
            rates[name].append(args.samples / seconds)

    latency = {"sandboxed": [], "bare": []}
    for _ in range(args.latency_reps):
        for name, fn in (("sandboxed", run_sandboxed), ("bare", run_bare)):
            seconds, _ = timed(fn, config, samples[:1], items[:1])
            latency[name].append(seconds * 1000)

    s, b = summary(rates["sandboxed"]), summary(rates["bare"])
    ls, lb = statistics.median(latency["sandboxed"]), statistics.median(latency["bare"])
    cores = len(os.sched_getaffinity(0))
    print(f"python grader throughput: {args.samples} samples/batch, {args.reps} reps, {cores} cores available, "
          f"sandbox pinned to {config.cpus} cpu")
    for name, st in (("sandboxed (bwrap)", s), ("bare python -I -S", b)):
        print(f"  {name:<18} median {st['median']:8.0f} samples/s   min {st['min']:8.0f}   max {st['max']:8.0f}   "
              f"stdev {st['stdev']:6.0f}   spread {st['spread_pct']:4.1f}%")
    print(f"  ratio sandboxed/bare (medians): {s['median'] / b['median']:.3f}")
    print(f"  one-sample batch latency p50: sandboxed {ls:.1f} ms, bare {lb:.1f} ms (+{ls - lb:.1f} ms per sandbox)")
    verdict = "PASS" if s["median"] >= TARGET else "FAIL"
    print(f"  target >= {TARGET:.0f} samples/s sandboxed: {verdict}")
    write_markdown(args, cores, config, s, b, ls, lb, verdict)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": args.samples, "reps": args.reps, "cores": cores, "sandboxed": s, "bare": b,
                       "ratio": s["median"] / b["median"], "latency_ms_p50": {"sandboxed": ls, "bare": lb},
                       "raw": rates, "latency_raw_ms": latency}, f, indent=2)
    return 0 if verdict == "PASS" else 1


def write_markdown(args, cores, config, s, b, ls, lb, verdict) -> None:
    """Rewrite this bench's own section of BENCHMARKS.md with the figures just measured."""
    import platform
    import time

    from benchmarks_md import write_section

    rows = "\n".join(f"| {name} | {st['median']:,.0f} | {st['min']:,.0f} | {st['max']:,.0f} | {st['spread_pct']:.1f}% |"
                     for name, st in (("sandboxed (bwrap)", s), ("bare `python -I -S`", b)))
    body = f"""Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {cores} CPUs available, sandbox pinned to
{config.cpus} CPU, load average {os.getloadavg()[0]:.1f} at the end, by `bench/bench_python_grader.py`.
A stdlib grader (token F1 + difflib), {args.samples} samples per batch, {args.reps} repetitions, sandboxed and
bare runs alternating; the bare baseline runs the same harness in an unsandboxed `python -I -S`.

| what | median samples/s | min | max | spread |
|---|---:|---:|---:|---:|
{rows}

Sandboxed / bare (medians): {s['median'] / b['median']:.2f}. One-sample batch p50: sandboxed {ls:.1f} ms, bare
{lb:.1f} ms (+{ls - lb:.1f} ms to create a sandbox). Target >= {TARGET:.0f} samples/s sandboxed: {verdict}."""
    write_section("bench_python_grader", "Python grader sandbox", body)


if __name__ == "__main__":
    sys.exit(main())
