"""The CLI's output for scripts and people: --json on list/get commands, the watch's progress
line and summary (loss or reward, ETA, best checkpoint), and progress for uploads and model
conversion. The API is a real app behind the openai SDK (over a TestClient, no network)."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from modelmill import cli, watch
from modelmill.progress import step_progress, upload_progress
from modelmill.service.api.app import create_app
from modelmill.service.store import NewJob, open_store
from modelmill.service.store.records import to_json
from modelmill.settings import Settings


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path))
    s = open_store(Settings(home=tmp_path).ensure_dirs())
    yield s
    s.close()


@pytest.fixture
def sdk(tmp_path, store, monkeypatch):
    """An openai client talking to a real app; the CLI's commands use it."""
    with TestClient(create_app(Settings(home=tmp_path), store=store)) as http:
        client = OpenAI(base_url="http://testserver/v1", api_key="local", http_client=http, max_retries=0)
        monkeypatch.setattr(cli, "_client", lambda args: client)
        yield client


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
