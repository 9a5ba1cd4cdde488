"""What the learning-results stories share: the context they run in (a live ModelMill server and
the official openai SDK), the Results JSON (bench/README.md, "Results JSON") and the
BENCHMARKS.md section `results` built from every story's JSON.

A story module has `run(ctx: Context) -> dict` returning `result(...)`; bench/results/run.py
times it, writes bench/out/results_<story>.json and merges it into the section: a re-run story's
table block and notes block replace its old ones, which stay right below, relabelled
"<story> (earlier run, kept for comparison)" (one earlier run per story); every other story's
blocks stay as they are (bench/out is git-ignored: on a fresh checkout it holds only this run's JSON).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent
BENCH_DIR = RESULTS_DIR.parent
REPO = BENCH_DIR.parent
EXAMPLES = REPO / "examples"
SECTION = ("results", "Learning results")
STORIES = ("sft", "intent", "dpo", "dpo_arith", "rft", "rft_gcd", "synth", "agentic", "vision")


@dataclass(frozen=True)
class Context:
    """Where a story runs: a live server (base_url, client) whose data directory is `home`."""

    client: object  # openai.OpenAI pointed at the server
    base_url: str
    api_key: str
    home: Path  # the server's MODELMILL_HOME (adapters are read from home/jobs/<job>/adapter)
    quick: bool  # modelmill-tiny and tiny data: the code path only, no meaningful figures


def result(story: str, model: str, metric: str, base: float, fine_tuned: float, target: str, met: bool | None,
           wall_s: float, details: dict) -> dict:
    """One story's Results JSON. details["rows"] lists every metric shown in the table (the
    headline first) as {"metric", "base", "fine_tuned", "target", "met"}; details["notes"] holds
    the sentences printed under the table."""
    return {"story": story, "model": model, "metric": metric, "base": base, "fine_tuned": fine_tuned,
            "target": target, "met": met, "wall_s": round(wall_s, 1), "details": details}


def row(metric: str, base: float | None, fine_tuned: float | None, target: str | None, met: bool | None) -> dict:
    return {"metric": metric, "base": base, "fine_tuned": fine_tuned, "target": target, "met": met}


def machine(load_at_start: float | None = None) -> str:
    """One line about the machine, with the load average at the story's start (when known) and end:
    above the CPU count, other work shared the machine and the wall times are inflated."""
    import torch

    sys.path.insert(0, str(BENCH_DIR))
    from benchmarks_md import cpu_name

    cpu = cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    threads = os.environ.get("OMP_NUM_THREADS") or torch.get_num_threads()
    return (f"{cpu}, {os.cpu_count()} CPUs, fp32, torch {torch.__version__} (threads: {threads}), "
            f"Python {platform.python_version()}, load average "
            + (f"{load_at_start:.1f} at the start, " if load_at_start is not None else "") + f"{load:.1f} at the end")


def today() -> str:
    return dt.date.today().isoformat()


def load_example(name: str, filename: str = "run.py"):
    """An example's script as a module under a unique name (each example has its own run.py)."""
    path = EXAMPLES / name / filename
    module_name = f"example_{name}_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def wait_job(client, job_id: str):
    """Follow a job to its end with the CLI's progress display (stderr); the final job object."""
    from modelmill.watch import watch_job

    job = watch_job(client, job_id, stop_on_pause=False)
    if job.status != "succeeded":
        raise RuntimeError(f"job {job_id} ended {job.status}: {job.error}")
    return job


def job_events(client, job_id: str) -> list:
    """Every event of a job, oldest first."""
    out, after = [], None
    while True:
        page = client.fine_tuning.jobs.list_events(job_id, limit=100, **({"after": after} if after else {}))
        out.extend(page.data)
        if not page.has_more or not page.data:
            return list(reversed(out))
        after = page.data[-1].id


def wait_eval_run(client, eval_id: str, run_id: str, poll: float = 2.0):
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            if run.status != "completed":
                raise RuntimeError(f"eval run {run_id} ended {run.status}: {run.error}")
            return run
        time.sleep(poll)


def output_items(client, eval_id: str, run_id: str) -> list:
    """Every output item of an eval run, by datasource_item_id."""
    items, after = [], None
    while True:
        page = client.evals.runs.output_items.list(run_id, eval_id=eval_id, limit=100,
                                                   **({"after": after} if after else {}))
        items.extend(page.data)
        if not page.has_more or not page.data:
            return sorted(items, key=lambda i: i.datasource_item_id)
        after = page.data[-1].id


def write_json(data: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"results_{data['story']}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def read_results(out_dir: Path, stories: tuple[str, ...] | list[str] = STORIES) -> list[dict]:
    found = {s: out_dir / f"results_{s}.json" for s in STORIES if s in stories}
    return [json.loads(p.read_text()) for p in found.values() if p.exists()]


# -- the BENCHMARKS.md section --------------------------------------------------------------------

def _num(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _met(met: bool | None) -> str:
    return "-" if met is None else ("**met**" if met else "**missed**")


def _wall(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s"


def section_body(results: list[dict]) -> str:
    """The table (one line per metric, each story's headline first) and each story's notes."""
    lines = ["Written by `make results` (`bench/results/run.py`): each story fine-tunes through a live "
             "ModelMill server with the official `openai` SDK and scores base and fine-tuned models on "
             "held-out data. Wall time is the whole story: base evaluation, training and fine-tuned "
             "evaluation, as measured; where the machine's load average exceeds its CPU count, other work "
             "shared the CPUs and the times are inflated accordingly.", "",
             "| story | metric | base | fine-tuned | target | met / missed | wall time | date | machine |",
             "|---|---|---:|---:|---|---|---:|---|---|"]
    for r in results:
        rows = r["details"].get("rows") or [row(r["metric"], r["base"], r["fine_tuned"], r["target"], r["met"])]
        for i, x in enumerate(rows):
            first = i == 0
            lines.append(f"| {r['story'] if first else ''} | {x['metric']} | {_num(x['base'])} | "
                         f"{_num(x['fine_tuned'])} | {x['target'] or '-'} | {_met(x['met'])} | "
                         f"{_wall(r['wall_s']) if first else ''} | {r['details'].get('date', '') if first else ''} | "
                         f"{r['details'].get('machine', '') if first else ''} |")
    for r in results:
        notes = r["details"].get("notes") or []
        if notes:
            lines += ["", f"**{r['story']}** ({r['model']}):", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines)


# Merging into the section already in BENCHMARKS.md. A body splits into its head (intro and the table's
# header), table blocks (a row whose first cell names a story, then its rows with an empty first cell) and
# notes blocks (from a line "**<label>** (...):" to the next such line), each keyed by its label.

EARLIER = " (earlier run, kept for comparison)"
TABLE_HEADER = "| story |"
NOTES_LABEL = re.compile(r"\*\*([^*]+)\*\*.*:$")


def _blocks(lines: list[str], label) -> list[tuple[str, list[str]]]:
    """(label, lines) in order; lines before the first label form a block labelled ""."""
    blocks = []
    for line in lines:
        key = label(line)
        if key is not None or not blocks:
            blocks.append((key or "", []))
        blocks[-1][1].append(line)
    return blocks


def _row_label(line: str) -> str | None:
    return line.split("|")[1].strip() or None


def _notes_label(line: str) -> str | None:
    m = NOTES_LABEL.match(line)
    return m.group(1) if m else None


def _parse(body: str):
    """(head, table blocks, notes blocks), or None when the body has no table to merge with."""
    lines = body.strip("\n").split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(TABLE_HEADER)), None)
    if start is None:
        return None
    end = start + 2  # the header and its |---| line
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    notes = [(key, _strip_blank(block)) for key, block in _blocks(lines[end:], _notes_label)]
    return lines[:start + 2], _blocks(lines[start + 2:end], _row_label), [b for b in notes if b[1]]


def _strip_blank(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def _relabel(lines: list[str], key: str, pattern: str) -> list[str]:
    """The block with its label (first line) renamed to "<key> (earlier run, ...)"; the rest as it was."""
    first = lines[0].replace(pattern.format(key), pattern.format(key + EARLIER), 1)
    return [first, *lines[1:]]


def _merge(old: list, new: list, stories: list[str], pattern: str) -> list:
    """old's blocks, each re-run story's new block in its old one's place (or appended), the old one kept
    below it as the earlier run unless identical (so that writing the same JSON twice changes nothing)."""
    blocks, fresh = list(old), dict(new)
    for story in stories:
        keys = [k for k, _ in blocks]
        new_block = [(story, fresh[story])] if story in fresh else []
        if story not in keys:
            blocks += new_block
        elif blocks[keys.index(story)][1] != fresh.get(story):
            i = keys.index(story)
            earlier = (story + EARLIER, _relabel(blocks[i][1], story, pattern))
            # One earlier run per story: the one already there gives way to the block replaced now.
            blocks = ([b for b in blocks[:i] if b[0] != earlier[0]] + new_block + [earlier]
                      + [b for b in blocks[i + 1:] if b[0] != earlier[0]])
    return blocks


def merged_body(old_body: str | None, results: list[dict]) -> str:
    """The section body with `results` merged into old_body (the section as it stands, if any)."""
    new = _parse(section_body(results))
    old = _parse(old_body) if old_body else None
    if old is None:  # no section yet, or no table in it: the fresh body, as before merging existed
        return section_body(results)
    stories = [r["story"] for r in results]
    rows = _merge(old[1], new[1], stories, "| {} |")
    notes = _merge(old[2], new[2], stories, "**{}**")
    lines = new[0] + [line for _, block in rows for line in block]  # the writer's own intro and header
    for _, block in notes:
        lines += ["", *block]
    return "\n".join(lines)


def _current_body(md_path: Path) -> str | None:
    """The text of the section `results` under its "## title" line, or None when there is none."""
    begin, end = f"<!-- BEGIN {SECTION[0]} -->", f"<!-- END {SECTION[0]} -->"
    doc = md_path.read_text() if md_path.exists() else ""
    if begin not in doc or end not in doc:
        return None
    body = doc.split(begin, 1)[1].split(end, 1)[0].strip("\n")
    return body.split("\n", 1)[1] if body.startswith("## ") and "\n" in body else body


def write_section(out_dir: Path, md_path: Path, stories: tuple[str, ...] | list[str] = STORIES) -> None:
    """Merge the JSONs of `stories` (default: every one found in out_dir) into md_path's section. run.py
    names only the stories it just ran, so an older JSON left in out_dir never displaces a hand-edited block."""
    sys.path.insert(0, str(BENCH_DIR))
    from benchmarks_md import write_section as write

    results = read_results(out_dir, stories)
    if results:
        write(SECTION[0], SECTION[1], merged_body(_current_body(md_path), results), md_path)
