"""The CLI's output for scripts and people: --json on list/get commands, the watch's progress
line and summary (loss or reward, ETA, best checkpoint), and progress for uploads and model
conversion. The API is a real app behind the openai SDK (over a TestClient, no network)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from modelmill import cli, quiet, watch
from modelmill.progress import step_progress, upload_progress
from modelmill.service.store import NewJob
from modelmill.service.store.records import to_json
from modelmill.settings import Settings
from tests.cli_app import sdk, store  # noqa: F401 - pytest fixtures


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def add_job(store, job_id: str, method: str = "supervised", **fields) -> str:
    store.jobs.create(NewJob(id=job_id, model="modelmill-tiny", base_model="modelmill-tiny", init_adapter=None,
                             training_file="file-x", validation_file=None, suffix=None, seed=0, metadata=None,
                             integrations=None, method_type=method,
                             hyperparameters={"n_epochs": 1, "batch_size": 1, "learning_rate_multiplier": 1.0},
                             ft_name=f"ft:modelmill-tiny:modelmill::{job_id[-4:]}"))
    fields = {k: to_json(v) if isinstance(v, (dict, list)) else v for k, v in fields.items()}
    if fields:
        sets = ", ".join(f"{k} = ?" for k in fields)
        store.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))
    return job_id


def add_checkpoint(store, job_id: str, step: int, metrics: dict) -> None:
    store.db.execute("INSERT INTO checkpoints (id, job_id, created_at, step_number, metrics, path,"
                     " fine_tuned_model_checkpoint) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (f"ftckpt_{step}", job_id, time.time(), step, json.dumps({"step": step, **metrics}), "/x",
                      f"ft:modelmill-tiny:modelmill::{job_id[-4:]}:ckpt-step-{step}"))


def finished_rft_job(store) -> str:
    now = time.time()
    job_id = add_job(store, "ftjob-rft1", method="reinforcement", status="succeeded", created_at=now - 90,
                     started_at=now - 80, finished_at=now, trained_tokens=5000, step=4, total_steps=4,
                     fine_tuned_model="ft:modelmill-tiny:modelmill::rft1")
    for step, reward in ((1, 0.2), (2, 0.4), (3, 0.5), (4, 0.7)):
        data = {"step": step, "total_steps": 4, "train_reward_mean": reward, "train_loss": 0.1}
        if step % 2 == 0:
            data["valid_reward_mean"] = reward + 0.05
        store.events.add(job_id, "info", f"Step {step}/4", type="metrics", data=data)
    add_checkpoint(store, job_id, 2, {"valid_reward_mean": 0.45})
    add_checkpoint(store, job_id, 4, {"valid_reward_mean": 0.75})
    store.events.add(job_id, "info", "The job has successfully completed")
    return job_id


# -- --json ------------------------------------------------------------------------------

def test_jobs_list_and_get_json(sdk, store, capsys):
    add_job(store, "ftjob-aaaa")
    add_job(store, "ftjob-bbbb", status="running", step=3, total_steps=10)
    assert cli.main(["jobs", "list", "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in jobs] == ["ftjob-bbbb", "ftjob-aaaa"]
    assert jobs[0]["object"] == "fine_tuning.job" and jobs[0]["status"] == "running"

    assert cli.main(["jobs", "get", "ftjob-aaaa", "--json"]) == 0
    job = json.loads(capsys.readouterr().out)
    assert job["id"] == "ftjob-aaaa" and job["method"]["type"] == "supervised"

    assert cli.main(["jobs", "get", "ftjob-aaaa"]) == 0
    assert capsys.readouterr().out.startswith("job ftjob-aaaa: validating_files")


def test_files_list_json(sdk, capsys, tmp_path):
    sdk.files.create(file=("a.jsonl", b'{"messages": []}\n'), purpose="fine-tune")
    sdk.files.create(file=("b.json", b"{}"), purpose="user_data")
    assert cli.main(["files", "list", "--json"]) == 0
    files = json.loads(capsys.readouterr().out)
    assert sorted(f["filename"] for f in files) == ["a.jsonl", "b.json"] and all(f["object"] == "file" for f in files)
    assert cli.main(["files", "list", "--json", "--purpose", "user_data"]) == 0
    assert [f["filename"] for f in json.loads(capsys.readouterr().out)] == ["b.json"]
    assert cli.main(["files", "list"]) == 0
    assert "a.jsonl" in capsys.readouterr().out


def test_models_list_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path))
    assert cli.main(["models", "list", "--json", "--home", str(tmp_path)]) == 0
    models = json.loads(capsys.readouterr().out)
    assert {"SmolLM2-135M-Instruct", "modelmill-tiny"} <= {m["id"] for m in models}
    assert all(set(m) == {"id", "created", "source"} for m in models)


# -- watch -------------------------------------------------------------------------------

def test_watch_ends_with_a_summary_of_rewards_and_the_best_checkpoint(sdk, store):
    job_id = finished_rft_job(store)
    out = io.StringIO()  # not a terminal: plain lines
    job = watch.watch_job(sdk, job_id, poll=0.01, out=out)
    text = out.getvalue()
    assert job.status == "succeeded"
    assert "[info] The job has successfully completed" in text
    assert "step 4/4 eta 0s" in text and "reward=0.7000" in text
    summary = text[text.index(f"job {job_id}: succeeded"):]
    assert "steps:            4/4" in summary and "trained_tokens:   5000" in summary
    assert "valid_reward=0.7500" in summary  # the newest value, from a few events back
    assert "best checkpoint:  ft:modelmill-tiny:modelmill::rft1:ckpt-step-4 (valid_reward_mean=0.7500)" in summary


def test_watch_on_a_terminal_draws_a_bar_with_loss_and_eta(sdk, store):
    job_id = add_job(store, "ftjob-sft1", status="cancelled", step=2, total_steps=8, finished_at=time.time())
    store.events.add(job_id, "info", "Step 2/8", type="metrics", data={"step": 2, "total_steps": 8, "train_loss": 1.25})
    add_checkpoint(store, job_id, 2, {"train_loss": 1.25})
    out = TTY()
    assert cli.main(["jobs", "watch", job_id]) == 1  # cancelled: a non-zero exit for scripts
    job = watch.watch_job(sdk, job_id, poll=0.01, out=out)
    assert job.status == "cancelled"
    text = out.getvalue()
    assert "2/8" in text and "loss=1.2500" in text and "eta=" in text
    assert "best checkpoint:  ft:modelmill-tiny:modelmill::sft1:ckpt-step-2 (train_loss=1.2500)" in text


def test_eta_prefers_the_servers_estimate_while_running():
    class Job:
        status, estimated_finish = "running", 1_000.0 + 125

    assert watch.eta_text(Job(), None, 3, 10, now=1_000.0) == "2m05s"
    Job.estimated_finish = None  # e.g. queued again after a resume: this watch's own rate
    assert watch.eta_text(Job(), None, 3, 10) == "?"
    assert watch.eta_text(Job(), (time.monotonic() - 10, 1), 3, 10) in ("35s", "34s", "36s")
    assert watch.eta_text(Job(), None, 10, 10) == "0s"
    Job.status = "cancelled"
    assert watch.eta_text(Job(), (time.monotonic() - 10, 1), 3, 10) == "-"


# -- evals -------------------------------------------------------------------------------

EXACT = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.label}}",
         "operation": "eq"}
NONEMPTY = {"type": "string_check", "name": "nonempty", "input": "{{sample.output_text}}", "reference": "",
            "operation": "ne"}


def make_eval(sdk, name: str = "labels"):
    return sdk.evals.create(name=name, data_source_config={"type": "custom", "item_schema": {"type": "object"},
                                                           "include_sample_schema": True},
                            testing_criteria=[EXACT, NONEMPTY])


def labelled(n: int) -> list[dict]:
    """n items whose sample is right for even i (exact passes) and never empty (nonempty passes)."""
    return [{"item": {"label": str(i)}, "sample": {"output_text": str(i) if i % 2 == 0 else "no"}} for i in range(n)]


def execute_next_run(tmp_path, store) -> str:
    from modelmill.service.evals.runner import run_next_eval

    return run_next_eval(Settings(home=tmp_path), store, "test-worker", threading.Event())


def test_evals_list_runs_and_get(sdk, store, tmp_path, capsys):
    ev = make_eval(sdk)
    other = make_eval(sdk, name="other")
    run = sdk.evals.runs.create(ev.id, name="given-samples",
                                data_source={"type": "jsonl", "source": {"type": "file_content",
                                                                         "content": labelled(4)}})
    assert execute_next_run(tmp_path, store) == run.id

    assert cli.main(["evals", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["id"] for e in listed] == [other.id, ev.id] and listed[1]["object"] == "eval"
    assert cli.main(["evals", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{ev.id}  labels" in out and "exact,nonempty" in out

    assert cli.main(["evals", "runs", ev.id, "--json"]) == 0
    (got,) = json.loads(capsys.readouterr().out)
    assert got["id"] == run.id and got["status"] == "completed" and got["result_counts"]["passed"] == 2
    assert cli.main(["evals", "runs", ev.id]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{run.id}  completed") and "2/4 passed  given-samples" in line

    assert cli.main(["evals", "get", ev.id, run.id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_testing_criteria_results"] == [
        {"testing_criteria": "exact", "passed": 2, "failed": 2}, {"testing_criteria": "nonempty", "passed": 4, "failed": 0}]
    assert cli.main(["evals", "get", ev.id, run.id]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"eval run {run.id} (given-samples): completed")
    assert "items:    4 (passed 2, failed 2, errored 0)" in text
    assert "exact: 50.0% passed (2/4)" in text and "nonempty: 100.0% passed (4/4)" in text
    assert f"report:   http://testserver/evals/{ev.id}/runs/{run.id}" in text


def test_evals_watch_follows_a_run_to_its_summary(sdk, store, tmp_path, monkeypatch):
    from modelmill.service.evals import runner

    monkeypatch.setattr(runner, "EVAL_BATCH", 2)  # progress in steps of 2 items
    ev = make_eval(sdk)
    lines = "".join(json.dumps(row) + "\n" for row in labelled(6))
    f = sdk.files.create(file=("items.jsonl", lines.encode()), purpose="evals")
    run = sdk.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": f.id}})
    assert watch.eval_run_total(sdk, run) == 6  # counted from the file

    worker = threading.Timer(0.2, execute_next_run, (tmp_path, store))
    worker.start()
    out = io.StringIO()  # not a terminal: a plain line per change
    try:
        done = watch.watch_eval_run(sdk, ev.id, run.id, poll=0.02, out=out)
    finally:
        worker.join()
    text = out.getvalue()
    assert done.status == "completed"
    first = text.splitlines()[0]  # "queued 0/6 items ..." unless the machine is slow
    assert first.split()[1].endswith("/6") and first.split()[2] == "items"
    assert "completed 6/6 items passed=3 failed=3 errored=0" in text
    summary = text[text.index(f"eval run {run.id}"):]
    assert "exact: 50.0% passed (3/6)" in summary and "nonempty: 100.0% passed (6/6)" in summary
    assert f"report:   http://testserver/evals/{ev.id}/runs/{run.id}" in summary

    tty = TTY()  # a terminal: a bar of items graded out of the total
    watch.watch_eval_run(sdk, ev.id, run.id, poll=0.01, out=tty)
    assert "6/6" in tty.getvalue() and "passed=3" in tty.getvalue() and "100%" in tty.getvalue()
    assert cli.main(["evals", "watch", ev.id, run.id]) == 0


def test_evals_run_command_starts_a_jsonl_run(sdk, store, tmp_path, capsys):
    ev = make_eval(sdk)
    lines = "".join(json.dumps(row) + "\n" for row in labelled(2))
    f = sdk.files.create(file=("items.jsonl", lines.encode()), purpose="evals")
    assert cli.main(["evals", "run", ev.id, "--file", f.id, "--name", "cli"]) == 0
    run_id = capsys.readouterr().out.split()[0].rstrip(":")
    run = sdk.evals.runs.retrieve(run_id, eval_id=ev.id)
    assert (run.name, run.status, run.data_source.type) == ("cli", "queued", "jsonl")
    assert execute_next_run(tmp_path, store) == run_id
    assert cli.main(["evals", "watch", ev.id, run_id]) == 0  # already done: straight to the summary
    assert "exact: 50.0% passed (1/2)" in capsys.readouterr().err

    # --model: a completions run sampling that model on each item's messages (left queued here).
    prompts = "".join(json.dumps({"messages": [{"role": "user", "content": f"say {i}"}], "label": str(i)}) + "\n"
                      for i in range(2))
    f = sdk.files.create(file=("prompts.jsonl", prompts.encode()), purpose="evals")
    assert cli.main(["evals", "run", ev.id, "--file", f.id, "--model", "modelmill-tiny"]) == 0
    run_id = capsys.readouterr().out.split()[0].rstrip(":")
    source = sdk.evals.runs.retrieve(run_id, eval_id=ev.id).data_source.to_dict()
    assert source["type"] == "completions" and source["model"] == "modelmill-tiny"
    assert source["input_messages"] == {"type": "item_reference", "item_reference": "item.messages"}


# -- progress ----------------------------------------------------------------------------

def test_upload_progress_counts_every_byte_sent(sdk, tmp_path):
    data = b"".join(json.dumps({"i": i, "pad": "x" * 200}).encode() + b"\n" for i in range(3000))
    path = tmp_path / "big.jsonl"
    path.write_bytes(data)
    out = TTY()
    with upload_progress(path, out=out) as f:
        obj = sdk.files.create(file=f, purpose="fine-tune")
        assert f.bar.n == len(data)
    assert obj.bytes == len(data) and obj.filename == "big.jsonl"
    assert sdk.files.content(obj.id).read() == data
    assert "uploading big.jsonl: 100%" in out.getvalue()


def test_files_upload_command_prints_the_file_object(sdk, tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"messages": []}\n')
    assert cli.main(["files", "upload", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["filename"] == "t.jsonl"


def test_models_prepare_shows_conversion_progress(tmp_path, capsys, monkeypatch):
    from modelmill.ml import models

    def fake_ensure_base(home, name, progress=None):
        progress(f"Converting {name} (one time)")
        progress(f"{name} ready")
        return Path(home) / "models" / name

    monkeypatch.setattr(models, "ensure_base", fake_ensure_base)
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path))
    assert cli.main(["models", "prepare", "SmolLM2-135M-Instruct", "--home", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "models" / "SmolLM2-135M-Instruct")
    assert "Converting SmolLM2-135M-Instruct (one time)" in captured.err and "ready" in captured.err


def test_step_progress_ticks_on_a_terminal():
    out = TTY()
    with step_progress("preparing x", out=out, tick=0.01) as say:
        time.sleep(0.05)
        say("halfway")
    text = out.getvalue()
    assert "preparing x [00:00]" in text and "halfway" in text


def test_third_party_progress_bars_and_deprecations_stay_quiet(tmp_path):
    """A command's training and loading print only ModelMill's own output: no "Loading weights" bar, no
    TRL dataset bars, no transformers FutureWarning (the worker and ranks inherit the settings)."""
    script = ("from modelmill.cli import quiet_third_party_output\nquiet_third_party_output()\n"
              "import warnings\nfrom pathlib import Path\nfrom modelmill.ml import models\n"
              f"base = models.ensure_base(Path({str(tmp_path)!r}), 'modelmill-tiny')\n"
              "model = models.load_model(base)[0]\nmodel.is_gradient_checkpointing\n"
              "warnings.warn('a library deprecation', FutureWarning)\n"
              "from transformers.utils import logging\nassert not logging.is_progress_bar_enabled()\n")
    env = {k: v for k, v in os.environ.items() if k not in (*quiet.QUIET_ENV, "PYTHONWARNINGS")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Loading weights" not in done.stderr and "is_gradient_checkpointing" not in done.stderr, done.stderr
    # Only the known messages are filtered, never a whole category: ModelMill's own warnings (and a new
    # third-party one) still show.
    assert "a library deprecation" in done.stderr, done.stderr
