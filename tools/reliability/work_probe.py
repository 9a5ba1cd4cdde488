"""Issue 17's probes of unbounded work, against a real `modelmill serve` with its worker
(RELIABILITY.md, "Hostile input and denial of service"; `make reliability`):

    python -m tools.reliability.work_probe [--json PATH] [--give-up-s 5]

1. A chat with n=16, max_tokens=100000 (the original probe): its status.
2. A chat within the limits that asks for minutes of generation (n=4, max_tokens=4000), whose client
   gives up after --give-up-s; then a 1-token chat: how long it took (a generation that outlived
   its client would hold the model for minutes).
3. RFT jobs with eval_samples 300000 and 10^12 (the original probe): their status.
4. Project A's RFT job evaluating at the largest eval_samples allowed (64, every step); project B's
   SFT job queued behind it. A is cancelled mid-run: seconds until B's job is running.

Only the HTTP API and `modelmill keys create` are used, so the same script measures an older build
("before") as well. The fast versions are tests/e2e/test_chat_cancel.py, tests/ml/test_rft.py
(test_cancel_during_an_evaluation_stops_it_within_one_batch) and tests/service/test_jobs_api.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import openai
from openai import OpenAI

from modelmill.local_server import LocalServer, cli_command
from tools.datasets import STRING_CHECK, arithmetic_dataset, short_dataset

LONG_CHAT = dict(model="modelmill-tiny", messages=[{"role": "user", "content": "tell me everything"}],
                 temperature=1.0)


def _key(env: dict, project: str) -> str:
    return subprocess.run(cli_command("keys", "create", "--name", project, "--project", project), env=env,
                          check=True, capture_output=True, text=True).stdout.strip().split()[-1]


def _status_of(fn) -> str:
    try:
        fn()
        return "200"
    except openai.APIStatusError as e:
        return f"{e.status_code} {(e.body or {}).get('param') if isinstance(e.body, dict) else ''}".strip()
    except openai.APITimeoutError:
        return "client timeout"


def probe_chats(a: OpenAI, give_up_s: float) -> list[dict]:
    rows = []
    t = time.monotonic()
    status = _status_of(lambda: a.chat.completions.create(n=16, max_tokens=100_000, **LONG_CHAT))
    rows.append({"probe": "chat n=16 max_tokens=100000", "status": status, "seconds": round(time.monotonic() - t, 2)})
    a.chat.completions.create(model="modelmill-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    impatient = a.with_options(timeout=give_up_s, max_retries=0)
    status = _status_of(lambda: impatient.chat.completions.create(n=4, max_tokens=4000, **LONG_CHAT))
    t = time.monotonic()
    a.chat.completions.create(model="modelmill-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    rows.append({"probe": f"chat n=4 max_tokens=4000, client gone after {give_up_s:g} s: next 1-token chat",
                 "status": status, "seconds": round(time.monotonic() - t, 2)})
    return rows


def probe_rft(a: OpenAI, b: OpenAI, timeout_s: float = 600) -> list[dict]:
    rows = []
    train = a.files.create(file=("rft.jsonl", arithmetic_dataset(24)), purpose="fine-tune").id
    valid = a.files.create(file=("rft_valid.jsonl", arithmetic_dataset(8, seed=1)), purpose="fine-tune").id

    def rft(eval_samples: int):
        hp = {"n_epochs": 3, "batch_size": 4, "compute_multiplier": 0.5, "eval_interval": 1,
              "eval_samples": eval_samples, "reasoning_effort": "low"}
        return a.fine_tuning.jobs.create(training_file=train, validation_file=valid, model="modelmill-tiny", seed=1,
                                         metadata={"eval": "false"},
                                         method={"type": "reinforcement", "reinforcement": {
                                             "grader": STRING_CHECK, "hyperparameters": hp}})

    for n in (300_000, 10**12):
        rows.append({"probe": f"RFT job eval_samples={n}", "status": _status_of(lambda: rft(n))})
    job = rft(64)
    sft_file = b.files.create(file=("sft.jsonl", short_dataset(12)), purpose="fine-tune").id
    other = b.fine_tuning.jobs.create(training_file=sft_file, model="modelmill-tiny", metadata={"eval": "false"},
                                      method={"type": "supervised", "supervised": {"hyperparameters": {
                                          "n_epochs": 1}}})
    deadline = time.monotonic() + timeout_s
    while True:  # the base-model check (8 completions) is done: step 1 (8 rollouts) starts
        events = {e.message.split(" ")[0]: e.created_at for e in a.fine_tuning.jobs.list_events(job.id, limit=100).data}
        if "Base" in events and "Training" in events:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the RFT job never finished its base-model check")
        time.sleep(0.5)
    # Step 1 costs about what the base check did; then comes its evaluation, 8 prompts x 64 samples
    # (32 batches of 16, about 64 times a step): cancel once step 1 is surely done.
    time.sleep(2 * max(1, events["Base"] - events["Training"]) + 1)
    a.fine_tuning.jobs.cancel(job.id)
    t = time.monotonic()
    deadline = t + timeout_s
    while b.fine_tuning.jobs.retrieve(other.id).status in ("validating_files", "queued"):
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    rows.append({"probe": "RFT eval_samples=64 cancelled mid-evaluation: other project's job out of the queue after",
                 "status": b.fine_tuning.jobs.retrieve(other.id).status, "seconds": round(time.monotonic() - t, 2)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--give-up-s", type=float, default=5.0)
    args = ap.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="work-probe-"))
    env = dict(os.environ, MODELMILL_HOME=str(home))
    key_a, key_b = _key(env, "probe-a"), _key(env, "probe-b")
    with LocalServer(home, env={"MODELMILL_HOME": str(home)}) as server:
        a = OpenAI(base_url=server.base_url, api_key=key_a, max_retries=0, timeout=600)
        b = OpenAI(base_url=server.base_url, api_key=key_b, max_retries=0, timeout=600)
        rows = probe_chats(a, args.give_up_s) + probe_rft(a, b)
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
