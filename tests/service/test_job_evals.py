"""Before/after eval reports of fine-tuning jobs (service/jobs/eval_reports.py) on modelmill-tiny."""

from __future__ import annotations

import json
import time

from modelmill import reports
from modelmill.service.jobs import eval_reports as job_evals
from modelmill.service.store import EvalRunQueue
from modelmill.service.store.records import JobRecord
from modelmill.service.worker.loop import Worker
from tests.service.conftest import create_job, preference_line, training_jsonl, upload
from tests.spec_check import assert_matches

TINY = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4,
                                                                 "learning_rate_multiplier": 2.0}}}


def comparison_events(client, job_id: str) -> list[dict]:
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 200}).json()["data"]
    return [e for e in events if "eval_comparison" in e["data"]]


def test_job_with_validation_file_gets_a_before_after_table(client, store, settings):
    train = upload(client, training_jsonl(12))
    valid = upload(client, training_jsonl(4), filename="valid.jsonl")
    job = create_job(client, train["id"], validation_file=valid["id"], seed=1, method=TINY,
                     metadata={"eval_checkpoints": "true"})
    assert Worker(settings, store).run_once() == job["id"]
    done = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]

    events = client.get(f"/v1/fine_tuning/jobs/{job['id']}/events", params={"limit": 200}).json()["data"]
    assert events[0]["message"] == "The job has successfully completed"
    [event] = comparison_events(client, job["id"])
    assert event["type"] == "message" and event["level"] == "info"
    table = event["data"]["eval_comparison"]
    assert table["criteria"] == ["exact_match"]
    assert [r["label"] for r in table["rows"]] == ["base", "step 3", "final"]
    base, step, final = table["rows"]
    assert base["model"] == "modelmill-tiny" and final["model"] == done["fine_tuned_model"]
    assert step["model"] == f"{done['fine_tuned_model']}:ckpt-step-3"
    for row in table["rows"]:
        assert row["total"] == 4 and 0 <= row["passed"] <= 4 and set(row["scores"]) == {"exact_match"}
        assert row["report_url"] == f"http://127.0.0.1:8000/evals/{row['eval_id']}/runs/{row['run_id']}"
        assert row["label"] in event["message"]
        run = client.get(f"/v1/evals/{row['eval_id']}/runs/{row['run_id']}").json()
        assert_matches(run, "EvalRun")
        assert run["status"] == "completed" and run["metadata"]["fine_tuning_job_id"] == job["id"]
    ev = client.get(f"/v1/evals/{base['eval_id']}").json()
    assert ev["metadata"] == {"fine_tuning_job_id": job["id"]}

    items = client.get(f"/v1/evals/{base['eval_id']}/runs/{base['run_id']}/output_items").json()["data"]
    assert items[0]["datasource_item"] == {
        "input": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 0 plus 0?"}],
        "reference": "0."}
    sample = items[0]["sample"]
    assert sample["temperature"] == 0 and sample["max_completion_tokens"] == len("0.") + 2


def test_the_base_eval_runs_after_training_unless_asked_first(client, store, settings):
    train = upload(client, training_jsonl(12))
    valid = upload(client, training_jsonl(4), filename="valid.jsonl")
    orders = {}
    for first in (False, True):
        job = create_job(client, train["id"], validation_file=valid["id"], seed=1, method=TINY,
                         metadata={"eval_base_first": "true"} if first else None)
        assert Worker(settings, store).run_once() == job["id"]
        events = store.events.all_for(job["id"])  # oldest first
        step1 = next(i for i, e in enumerate(events) if e.type == "metrics")
        base = next(i for i, e in enumerate(events) if e.message.startswith("Evaluating the base model"))
        orders[first] = base < step1
        assert [r["label"] for r in comparison_events(client, job["id"])[0]["data"]["eval_comparison"]["rows"]] \
            == ["base", "final"]
    assert orders == {False: False, True: True}


def test_metadata_eval_id_runs_that_evals_criteria(client, store, settings):
    criterion = {"type": "string_check", "name": "has_digit", "input": "{{sample.output_text}}",
                 "reference": "1", "operation": "like"}
    ev = client.post("/v1/evals", json={"name": "mine", "testing_criteria": [criterion], "data_source_config": {
        "type": "custom", "item_schema": {"type": "object", "required": ["reference"]}}}).json()
    train = upload(client, training_jsonl(12))
    job = create_job(client, train["id"], seed=1, method=TINY, metadata={
        "eval": "true", "eval_id": ev["id"], "eval_max_items": "3", "eval_max_tokens": "2"})
    Worker(settings, store).run_once()
    [event] = comparison_events(client, job["id"])
    table = event["data"]["eval_comparison"]
    assert table["criteria"] == ["has_digit"] and [r["label"] for r in table["rows"]] == ["base", "final"]
    assert all(r["eval_id"] == ev["id"] and r["total"] == 3 for r in table["rows"])  # items: the training file
    runs = client.get(f"/v1/evals/{ev['id']}/runs").json()["data"]
    assert {r["id"] for r in runs} == {r["run_id"] for r in table["rows"]}
    assert all(r["data_source"]["sampling_params"]["max_completion_tokens"] == 2 for r in runs)


def test_cancel_during_the_base_eval_cancels_job_and_run(client, store, settings, monkeypatch):
    train = upload(client, training_jsonl(12))
    valid = upload(client, training_jsonl(4), filename="valid.jsonl")
    job = create_job(client, train["id"], validation_file=valid["id"], method=TINY,
                     metadata={"eval_base_first": "true"})
    original = EvalRunQueue.start

    def start_then_cancel(self, lease, total):
        original(self, lease, total)
        client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")

    monkeypatch.setattr(EvalRunQueue, "start", start_then_cancel)
    Worker(settings, store).run_once()
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled"
    [run] = store.evals.runs_for_job(job["id"])
    assert run.job_label == "base" and run.status == "canceled"
    assert comparison_events(client, job["id"]) == []


def job_record(**kw) -> JobRecord:
    base = dict(id="ftjob-x", created_at=0, model="m", base_model="m", init_adapter=None, training_file="f",
                validation_file=None, suffix=None, seed=0, metadata=None, integrations=None,
                method_type="supervised", hyperparameters={}, hyperparameters_resolved=True, ft_name="ft:m",
                status="running", requested_action=None, error=None, fine_tuned_model=None, adapter_dir=None,
                model_deleted_at=None, finished_at=None, started_at=None, trained_tokens=None, total_steps=None,
                step=None, estimated_finish=None)
    return JobRecord(**{**base, **kw})


def test_when_a_job_is_evaluated():
    assert not job_evals.enabled(job_record())
    assert job_evals.enabled(job_record(validation_file="file-v"))
    assert job_evals.enabled(job_record(metadata={"eval": "true"}))
    assert not job_evals.enabled(job_record(validation_file="file-v", metadata={"eval": "false"}))


def test_items_per_method():
    sft = json.loads(training_jsonl(1))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    items, shared = job_evals._items("supervised", [{**sft, "tools": tools}, {"messages": [{"role": "user",
                                                                                               "content": "x"}]}])
    assert items == [{"input": sft["messages"][:2], "reference": "0."}] and shared == tools  # no answer: skipped
    call = {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "f", "arguments": "{\"a\": 1}"}}]}
    items, _ = job_evals._items("supervised", [{"messages": [{"role": "user", "content": "go"}, call]}])
    assert json.loads(items[0]["reference"]) == [{"name": "f", "arguments": "{\"a\": 1}"}]
    dpo = json.loads(preference_line(3))
    items, shared = job_evals._items("dpo", [dpo])
    assert items == [{"input": dpo["input"]["messages"], "reference": "6."}] and shared is None
    rft = {"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"}
    assert job_evals._items("reinforcement", [rft]) == ([rft], None)


def test_comparison_table_text():
    rows = [{"label": "base", "passed": 1, "total": 4, "scores": {"exact": 0.25}, "model": "m"},
            {"label": "final", "passed": 4, "total": 4, "scores": {"exact": 1.0}, "model": "ft:m"}]
    text = reports.comparison_table(["exact"], rows)
    assert text.splitlines()[1:] == ["run    passed  exact  model", "base   1/4     0.250  m",
                                     "final  4/4     1.000  ft:m"]


class WorkerDied(BaseException):
    """Stands for SIGKILL: nothing in the worker catches it."""


def test_a_base_eval_cut_short_by_a_dead_worker_is_finished_after_training(client, store, settings, monkeypatch):
    train = upload(client, training_jsonl(12))
    valid = upload(client, training_jsonl(4), filename="valid.jsonl")
    job = create_job(client, train["id"], validation_file=valid["id"], seed=1, method=TINY,
                     metadata={"eval_base_first": "true"})

    def die(self, lease, *args):
        raise WorkerDied()

    monkeypatch.setattr(EvalRunQueue, "record_items", die)
    try:
        Worker(settings, store, worker_id="dead").run_once()
    except WorkerDied:
        pass
    monkeypatch.undo()
    [base] = store.evals.runs_for_job(job["id"])
    assert base.status == "in_progress" and base.lease_owner == "dead"
    # The job's lease has run out; the run's has a moment left: the next worker waits for it.
    store.db.execute("UPDATE jobs SET lease_expires_at = 0 WHERE id = ?", (job["id"],))
    store.db.execute("UPDATE eval_runs SET lease_expires_at = ? WHERE id = ?", (time.time() + 0.5, base.id))

    assert Worker(settings, store, worker_id="next").run_once() == job["id"]
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "succeeded"
    base = store.evals.run_by_id(base.id)
    assert base.status == "completed" and base.reclaims == 1 and base.result_counts["total"] == 4
    [event] = comparison_events(client, job["id"])
    assert [r["label"] for r in event["data"]["eval_comparison"]["rows"]] == ["base", "final"]
