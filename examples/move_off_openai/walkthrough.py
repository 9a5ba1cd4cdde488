""""Move a fine-tune off OpenAI" (docs/data.md), end to end and offline.

A ModelMill server stands in for the OpenAI account (it speaks the same API): it holds a
fine-tuning job and the `ft:` model it made, the teacher. A second ModelMill server is where the
team moves to. Every step is the same command a user runs against api.openai.com:

    1. modelmill import openai   the jobs and files, recreated here paused
    2. modelmill data label      the team's unlabelled requests, answered by the ft: teacher
    3. train an open model       on those answers (a supervised job here)
    4. the Evals API             student and base scored against the teacher's answers (references)

    python examples/move_off_openai/walkthrough.py              # modelmill-tiny: the path, not the quality
    python examples/move_off_openai/walkthrough.py --teacher-base SmolLM2-135M-Instruct \
        --student SmolLM2-135M-Instruct --teacher-lines 80 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

from modelmill.local_server import LocalServer, cli_command

REPO = Path(__file__).resolve().parents[2]
SMART_HOME = REPO / "examples" / "smart_home"


def wait_job(client: OpenAI, job_id: str, timeout: float = 1800) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            if job.status != "succeeded":
                raise SystemExit(f"job {job_id} {job.status}: {job.error}")
            return job.fine_tuned_model
        time.sleep(1)
    raise SystemExit(f"job {job_id} did not finish in {timeout:.0f}s")


def run(*args: str) -> None:
    print("$ modelmill " + " ".join(args), flush=True)
    subprocess.run(cli_command(*args), check=True)


def requests_from(path: Path, limit: int) -> list[dict]:
    """The unlabelled side of a dataset: each line's messages up to the first assistant turn."""
    out = []
    for line in path.read_text().splitlines()[:limit]:
        obj = json.loads(line)
        cut = next(i for i, m in enumerate(obj["messages"]) if m["role"] == "assistant")
        out.append({"messages": obj["messages"][:cut], **({"tools": obj["tools"]} if "tools" in obj else {})})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher-base", default="modelmill-tiny", help="base of the stand-in ft: teacher")
    p.add_argument("--student", default="modelmill-tiny", help="the open model to train here")
    p.add_argument("--teacher-lines", type=int, default=16, help="smart-home lines the stand-in teacher trains on")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--requests", type=int, default=24, help="unlabelled requests to label (train)")
    p.add_argument("--held-out", type=int, default=8, help="held-out requests for the comparison")
    p.add_argument("--max-tokens", type=int, default=48, help="cap on each teacher answer")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="move-off-openai-"))
    with LocalServer(work / "openai-standin") as openai_side, LocalServer(work / "here") as here:
        theirs = OpenAI(base_url=openai_side.base_url, api_key="local")
        ours = OpenAI(base_url=here.base_url, api_key="local")

        print("0. (stand-in) the team's fine-tune on 'OpenAI'", flush=True)
        lines = (SMART_HOME / "train.jsonl").read_text().splitlines(keepends=True)[:args.teacher_lines]
        train = theirs.files.create(file=("team-train.jsonl", "".join(lines).encode()), purpose="fine-tune")
        job = theirs.fine_tuning.jobs.create(training_file=train.id, model=args.teacher_base, suffix="assistant",
                                             method={"type": "supervised", "supervised": {
                                                 "hyperparameters": {"n_epochs": 1, "batch_size": 8}}})
        teacher = wait_job(theirs, job.id)
        print(f"   teacher: {teacher}")

        print("1. import the jobs and files", flush=True)
        run("import", "openai", "--source-base-url", openai_side.base_url, "--source-api-key", "local",
            "--base-url", here.base_url, "--model-map", f"{args.teacher_base}={args.student}")

        print("2. label the team's unlabelled requests with the ft: model as teacher", flush=True)
        requests = requests_from(SMART_HOME / "valid.jsonl", 12) + requests_from(SMART_HOME / "train.jsonl", 80)
        held = requests_from(SMART_HOME / "test.jsonl", args.held_out)
        # The teacher's default temperature: greedy modelmill-tiny answers only blank lines (not a training line).
        label = ["--teacher", teacher, "--teacher-base-url", openai_side.base_url, "--teacher-api-key", "local",
                 "--max-tokens", str(args.max_tokens)]
        run("data", "label", str(write_jsonl(work / "requests.jsonl", requests[:args.requests])),
            "--out", str(work / "labelled.jsonl"), *label)
        run("data", "label", str(write_jsonl(work / "held_out.jsonl", held)), "--out", str(work / "refs.jsonl"),
            *label)

        print("3. train an open model on the teacher's answers", flush=True)
        f = ours.files.create(file=open(work / "labelled.jsonl", "rb"), purpose="fine-tune")
        job = ours.fine_tuning.jobs.create(training_file=f.id, model=args.student, suffix="distilled",
                                           method={"type": "supervised", "supervised": {"hyperparameters": {
                                               "n_epochs": args.epochs, "batch_size": 8}}})
        student = wait_job(ours, job.id)
        print(f"   student: {student}")

        print("4. compare student and base with the Evals API; the teacher's answers are the references")
        compare(ours, work / "refs.jsonl", {"base": args.student, "student": student}, args.max_tokens)


def compare(client: OpenAI, refs: Path, models: dict[str, str], max_tokens: int) -> None:
    items = []
    for line in refs.read_text().splitlines():
        obj = json.loads(line)
        answer = obj["messages"][-1]
        reference = answer.get("content") or json.dumps([c["function"] for c in answer.get("tool_calls", [])])
        items.append({"item": {"messages": obj["messages"][:-1], "reference": reference}})
    ev = client.evals.create(
        name="student vs teacher",
        data_source_config={"type": "custom", "item_schema": {"type": "object", "properties": {
            "messages": {"type": "array"}, "reference": {"type": "string"}}, "required": ["messages", "reference"]}},
        testing_criteria=[{"type": "text_similarity", "name": "agrees with the teacher", "evaluation_metric":
                           "fuzzy_match", "input": "{{sample.output_text}}", "reference": "{{item.reference}}",
                           "pass_threshold": 0.8}])
    for label, model in models.items():
        run_ = client.evals.runs.create(ev.id, name=label, data_source={
            "type": "completions", "model": model,
            "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
            "sampling_params": {"temperature": 0, "max_completion_tokens": max_tokens},
            "source": {"type": "file_content", "content": items}})
        while run_.status in ("queued", "in_progress"):
            time.sleep(1)
            run_ = client.evals.runs.retrieve(run_.id, eval_id=ev.id)
        c = run_.result_counts
        print(f"   {label:<8} {model:<48} {c.passed}/{c.total} agree with the teacher  {run_.report_url}")


if __name__ == "__main__":
    sys.exit(main())
