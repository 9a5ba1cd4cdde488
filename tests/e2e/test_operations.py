"""Operations against a real server: a tiny job's W&B (offline) and MLflow (file store) runs read
back, a tracker that fails leaving the job succeeded with a warn event, and GET /metrics scraped
after a job and a chat, parsed with prometheus_client's own parser."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import tiny_job, wait_for
from tools.datasets import short_dataset
from tools.servers import Server
from tests.service.tracker_runs import read_wandb_run, wandb_run_files


@pytest.fixture(scope="module")
def ops(tmp_path_factory):
    home = tmp_path_factory.mktemp("ops-home")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(home / "wandb-runs"),
           "MODELMILL_MLFLOW_TRACKING_URI": (home / "mlruns").as_uri(),
           "MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3.x keeps the file store behind this switch
           "MODELMILL_METRICS": "public"}
    s = Server(home, env=env)
    s.train = s.client.files.create(file=("train.jsonl", short_dataset(24)), purpose="fine-tune")
    yield s
    s.stop()


def scrape(server) -> dict[str, list]:
    r = httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def value(families, name: str, **labels) -> float:
    """The sum of samples named `name` (a family's own name, or with _total, _count, _sum) with these labels."""
    return sum(s.value for samples in families.values() for s in samples
               if s.name == name and labels.items() <= s.labels.items())


def test_a_job_reports_to_wandb_and_mlflow(ops, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for this process's client, reading the runs back

    integrations = [{"type": "wandb", "wandb": {"project": "mm-e2e", "tags": ["e2e"]}},
                    {"type": "mlflow", "mlflow": {"experiment_name": "mm-e2e"}}]
    job = tiny_job(ops.client, ops.train.id, batch_size=8, integrations=integrations)
    assert job.integrations[0].wandb.project == "mm-e2e"  # echoed, in OpenAI's shape
    job = wait_for(ops.client, job.id, {"succeeded", "failed"})
    assert job.status == "succeeded", job.error
    events = ops.client.fine_tuning.jobs.list_events(job.id, limit=100).data
    assert not [e.message for e in events if e.level == "warn"]
    steps = {e.data["step"]: e.data for e in events if e.type == "metrics"}

    [run_file] = wandb_run_files(ops.home / "wandb-runs", job.id)
    run = read_wandb_run(run_file)
    assert run.project == "mm-e2e" and "e2e" in run.tags
    assert run.config["hyperparameters"]["n_epochs"] == 1 and run.config["hyperparameters"]["batch_size"] == 8
    assert sorted(run.history) == sorted(steps)
    assert all(run.history[s]["train_loss"] == pytest.approx(steps[s]["train_loss"]) for s in steps)
    assert run.summary["fine_tuned_model"] == job.fine_tuned_model and run.exit_code == 0

    client = MlflowClient(tracking_uri=(ops.home / "mlruns").as_uri())
    [mlrun] = client.search_runs([client.get_experiment_by_name("mm-e2e").experiment_id])
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["fine_tuned_model"] == job.fine_tuned_model
    assert mlrun.data.params["hyperparameters.batch_size"] == "8"
    history = client.get_metric_history(mlrun.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == sorted(steps)


def test_a_failing_tracker_warns_and_the_job_still_succeeds(ops):
    # W&B refuses this project name when the run starts ('/' is not allowed): the tracker fails, not the job.
    job = tiny_job(ops.client, ops.train.id, batch_size=8,
                   integrations=[{"type": "wandb", "wandb": {"project": "bad/project"}}])
    job = wait_for(ops.client, job.id, {"succeeded", "failed"})
    assert job.status == "succeeded", job.error
    warns = [e.message for e in ops.client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.level == "warn"]
    assert len(warns) == 1 and "W&B integration failed" in warns[0] and "bad/project" in warns[0]


def test_metrics_after_jobs_and_a_chat(ops):
    jobs = ops.client.fine_tuning.jobs.list(limit=100).data
    if not any(j.status == "succeeded" for j in jobs):  # run alone: train one (the tests above leave two)
        wait_for(ops.client, tiny_job(ops.client, ops.train.id, batch_size=8).id, {"succeeded", "failed"})
        jobs = ops.client.fine_tuning.jobs.list(limit=100).data
    before = scrape(ops)
    chat = ops.client.chat.completions.create(model="modelmill-tiny", max_tokens=5,
                                              messages=[{"role": "user", "content": "turn on the hall lights"}])
    after = scrape(ops)

    for status in ("succeeded", "running", "queued"):
        assert value(after, "modelmill_jobs", status=status, method="supervised") == \
            sum(1 for j in jobs if j.status == status)
    assert value(after, "modelmill_queue_depth", queue="fine_tuning_jobs") == 0
    assert value(after, "modelmill_queue_oldest_age_seconds", queue="fine_tuning_jobs") == 0
    assert value(after, "modelmill_trained_tokens_total", method="supervised") == \
        sum(j.trained_tokens or 0 for j in jobs)
    # One step time per step after each job's first (its in-process worker records them in this process).
    steps = [sum(1 for e in ops.client.fine_tuning.jobs.list_events(j.id, limit=100).data if e.type == "metrics")
             for j in jobs]
    assert value(after, "modelmill_train_step_seconds_count", method="supervised") == sum(n - 1 for n in steps if n)
    assert (value(after, "modelmill_chat_request_seconds_count", stream="false")
            - value(before, "modelmill_chat_request_seconds_count", stream="false")) == 1
    assert (value(after, "modelmill_chat_tokens_total", kind="completion")
            - value(before, "modelmill_chat_tokens_total", kind="completion")) == chat.usage.completion_tokens
    assert (value(after, "modelmill_chat_tokens_total", kind="prompt")
            - value(before, "modelmill_chat_tokens_total", kind="prompt")) == chat.usage.prompt_tokens
    assert value(after, "modelmill_sampler_batch_rows_count") == value(before, "modelmill_sampler_batch_rows_count") + 1


def test_metrics_count_grader_calls_and_errors(ops):
    before = scrape(ops)
    run = ops.client.fine_tuning.alpha.graders.run
    run(grader={"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "a",
                "operation": "eq"}, model_sample="a")
    # A python grader whose code raises: graded, with an error in its metadata (and counted as one).
    run(grader={"type": "python", "name": "p", "source": "def grade(sample, item):\n    raise ValueError('no')\n"},
        model_sample="a")
    after = scrape(ops)
    assert value(after, "modelmill_grader_samples_total", type="string_check") - \
        value(before, "modelmill_grader_samples_total", type="string_check") == 1
    assert value(after, "modelmill_grader_errors_total", type="python") - \
        value(before, "modelmill_grader_errors_total", type="python") == 1
