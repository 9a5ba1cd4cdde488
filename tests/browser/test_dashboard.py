"""The dashboard in a real browser (headless chromium) against a live server with real
modelmill-tiny jobs: every page loads, the charts hold the job's metrics, the buttons drive
the job, an agentic RFT job's sampled trajectories render, the playground answers with two models,
the Evals page lists a run and links its report, and login keeps a login token (not the key) in a cookie that passes the CSRF check.

Set MODELMILL_DASHBOARD_SCREENSHOT=docs/dashboard-job.png to save the job page's screenshot.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from modelmill.service.store import open_store
from modelmill.settings import Settings
from tests.e2e.conftest import tiny_job, wait_for
from tools.datasets import short_dataset

TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def files(client):
    train = client.files.create(file=("train.jsonl", short_dataset(48)), purpose="fine-tune")
    valid = client.files.create(file=("valid.jsonl", short_dataset(12, seed=1)), purpose="fine-tune")
    return train, valid


@pytest.fixture(scope="module")
def finished_job(client, files):
    """2 epochs of 3 steps with a validation file: train_loss every step, valid_loss at step 5,
    full_valid_loss and a checkpoint at each epoch end."""
    train, valid = files
    job = tiny_job(client, train.id, n_epochs=2, batch_size=16, validation_file=valid.id,
                   metadata={"eval": "false"})  # no before/after evals: they take longer than the training
    job = wait_for(client, job.id, TERMINAL)
    assert job.status == "succeeded", job.error
    return job


def metric_counts(client, job_id: str) -> tuple[dict[str, int], int]:
    """How many steps carry each charted metric, and how many steps there are (as the page dedupes)."""
    by_step: dict[int, dict] = {}
    for ev in client.fine_tuning.jobs.list_events(job_id, limit=1000).data:
        if ev.type == "metrics":
            by_step.setdefault(ev.data["step"], {}).update(ev.data)
    names = ("train_loss", "valid_loss", "full_valid_loss")
    return {n: sum(n in m for m in by_step.values()) for n in names}, len(by_step)


def test_jobs_page_lists_the_job_with_progress_and_tokens(page, finished_job):
    page.goto("/")
    row = page.locator(f'tr[data-job-id="{finished_job.id}"]')
    row.wait_for()
    assert row.get_attribute("data-status") == "succeeded"
    assert "6/6" in row.locator("td.progress").inner_text()
    assert row.locator("td.tokens").inner_text() == str(finished_job.trained_tokens)
    assert row.locator("td.elapsed").inner_text() not in ("", "–")
    assert "supervised" in row.inner_text() and "modelmill-tiny" in row.inner_text()


def test_job_page_charts_hold_the_metrics_events(page, client, finished_job):
    counts, n_steps = metric_counts(client, finished_job.id)
    assert counts["train_loss"] == 6 and counts["valid_loss"] >= 1 and counts["full_valid_loss"] == 2
    page.goto(f"/jobs/{finished_job.id}")
    chart = page.locator("#chart-loss[data-points]")
    chart.wait_for()
    assert chart.locator("canvas").count() >= 1
    assert chart.get_attribute("data-series") == "train_loss,valid_loss,full_valid_loss"
    assert json.loads(chart.get_attribute("data-points")) == counts
    assert int(chart.get_attribute("data-steps")) == n_steps
    # The uPlot instance itself holds the same points.
    drawn = page.evaluate("MMCharts.loss.plot.data.slice(1).map(s => s.filter(v => v !== null).length)")
    assert drawn == [counts["train_loss"], counts["valid_loss"], counts["full_valid_loss"]]
    assert page.locator("#chart-accuracy canvas").count() >= 1

    checkpoints = client.fine_tuning.jobs.checkpoints.list(finished_job.id).data
    assert page.locator("#checkpoints-body tr[data-step]").count() == len(checkpoints) == 2
    best = min(checkpoints, key=lambda c: (c.metrics.full_valid_loss, -c.step_number))
    assert page.locator("#checkpoints-body tr[data-best]").get_attribute("data-step") == str(best.step_number)
    assert page.locator("#best-by").inner_text() == "Best: lowest full_valid_loss."
    assert "n_epochs" in page.locator("#hyperparameters").inner_text()
    assert "The job has successfully completed" in page.locator("#events").inner_text()
    assert page.locator("#job-status").inner_text() == "succeeded"
    assert page.locator("#btn-cancel").is_disabled()
    shot = os.environ.get("MODELMILL_DASHBOARD_SCREENSHOT")
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=shot, full_page=True)


def test_file_page_shows_the_report_and_a_token_histogram(page, client, files, finished_job):
    train, _ = files
    page.goto(f"/files/{train.id}")
    page.locator("#no-problems").wait_for()
    bins = page.locator("#token-histogram rect.bin")
    assert bins.count() >= 1
    assert sum(int(bins.nth(i).get_attribute("data-count")) for i in range(bins.count())) == 48
    assert page.locator("#tok-count").inner_text() == "48"
    # The limit that applies to the file's job (batch 16 on modelmill-tiny: the memory estimate may cap it).
    limit = page.locator("#max-seq-len").inner_text()
    assert 128 <= int(limit.split()[0]) <= 8192 and "modelmill-tiny's default for batches of 16" in limit

    lines = short_dataset(12).decode().splitlines()
    lines[2] = json.dumps({"messages": [{"role": "bot", "content": "hi"}]})
    bad = client.files.create(file=("bad.jsonl", ("\n".join(lines) + "\n").encode()), purpose="fine-tune")
    page.goto(f"/files/{bad.id}?model=modelmill-tiny")
    problems = page.locator("#problems-table tbody tr")
    problems.first.wait_for()
    assert problems.count() == 1
    assert problems.first.inner_text().split("\t")[:3] == ["3", "messages[0].role", "unknown_role"]

    page.goto("/files")
    assert page.locator("#files-table").inner_text().count("train.jsonl") == 1


def test_models_page_lists_base_fine_tuned_and_checkpoints(page, finished_job):
    page.goto("/models")
    table = page.locator("#models-table")
    for kind in ("base", "fine_tuned", "checkpoint"):
        assert table.locator(f'tr[data-kind="{kind}"]').count() >= 1, kind
    assert finished_job.fine_tuned_model in table.inner_text()


def test_playground_answers_with_two_models_side_by_side(page, finished_job):
    page.goto(f"/playground?a=modelmill-tiny&b={finished_job.fine_tuned_model}")
    assert page.locator("#pg-model-b").input_value() == finished_job.fine_tuned_model
    page.fill("#pg-prompt", "turn on the kitchen lights")
    page.fill("#pg-max-tokens", "8")
    page.click("#pg-run")
    for side in ("a", "b"):
        answer = page.locator(f"#answer-{side}[data-done]")
        answer.wait_for(timeout=60_000)
        text = answer.text_content()  # the tiny random model may answer with whitespace only
        assert text and text != "…" and not text.startswith("Error"), (side, text)
        assert "tokens" in page.locator(f"#meta-{side}").inner_text()


def test_evals_page_lists_a_run_and_its_report_link_works(page, client):
    exact = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
             "reference": "{{item.label}}", "operation": "eq"}
    ev = client.evals.create(name="browser labels", testing_criteria=[exact], data_source_config={
        "type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": True})
    rows = [{"item": {"label": str(i)}, "sample": {"output_text": str(i) if i < 3 else "no"}} for i in range(4)]
    f = client.files.create(file=("items.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()),
                            purpose="evals")
    run = client.evals.runs.create(ev.id, name="given samples",
                                   data_source={"type": "jsonl", "source": {"type": "file_id", "id": f.id}})
    deadline = time.monotonic() + 120  # the server's worker runs it (after any training job)
    while (run := client.evals.runs.retrieve(run.id, eval_id=ev.id)).status not in ("completed", "failed", "canceled"):
        assert time.monotonic() < deadline, f"eval run still {run.status}"
        time.sleep(0.2)
    assert run.status == "completed", run.error

    page.goto("/")
    page.click("header nav >> text=Evals")  # the nav links the page
    page.wait_for_url("**/evals")
    row = page.locator(f'tr[data-run-id="{run.id}"]')
    assert row.get_attribute("data-status") == "completed"
    assert page.locator(f'#eval-{ev.id} h2').inner_text().startswith("browser labels")
    assert row.locator("td.passed").inner_text().startswith("3/4")
    assert row.locator('td.rate[data-criterion="exact"]').inner_text().startswith("75.0%")
    row.locator("a.report").click()
    page.wait_for_url(f"**/evals/{ev.id}/runs/{run.id}")
    assert page.locator("h1").inner_text() == "browser labels"
    assert "Failing items (1)" in page.locator("body").inner_text()


def test_pause_resume_and_cancel_buttons_drive_a_running_job(page, client, server, files, finished_job):
    train, _ = files
    job = tiny_job(client, train.id, n_epochs=50, batch_size=1)  # 2,400 steps: runs until cancelled
    wait_for(client, job.id, {"running"})
    page.goto(f"/jobs/{job.id}")
    page.locator('#job[data-status="running"]').wait_for()

    page.click("#btn-pause")
    page.locator('#job[data-status="paused"]').wait_for(timeout=60_000)
    assert page.locator("#btn-resume").is_enabled()
    page.click("#btn-resume")
    page.locator('#job[data-status="queued"], #job[data-status="running"]').wait_for()

    page.locator("#btn-cancel:enabled").wait_for()
    page.click("#btn-cancel")
    page.locator('#job[data-status="cancelled"]').wait_for(timeout=60_000)
    # The API answers "cancelled" as soon as the request is stored; the job must also end so. A cancel
    # that landed while the worker was finishing the pause was once dropped with the lease and the
    # job trained on (store/job_queue.py finish), which the page's answer alone can miss.
    deadline = time.monotonic() + 60
    while not any(e.message == "Job cancelled" for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data):
        assert time.monotonic() < deadline, "the job was never cancelled"
        time.sleep(0.2)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert page.locator("#btn-cancel").is_disabled()

    # A before/after eval table (written by the evals feature as a job event) is rendered.
    store = open_store(Settings(home=server.home))
    try:
        store.events.add(job.id, "info", "Evals before and after fine-tuning", data={"eval_comparison": {
            "criteria": ["exact"], "rows": [
                {"label": "base", "model": "modelmill-tiny", "eval_id": "eval_1", "run_id": "evalrun_1",
                 "report_url": "/evals/eval_1/runs/evalrun_1", "scores": {"exact": 0.25}, "passed": 1, "total": 4},
                {"label": "final", "model": "ft:x", "eval_id": "eval_1", "run_id": "evalrun_2",
                 "report_url": "/evals/eval_1/runs/evalrun_2", "scores": {"exact": 0.75}, "passed": 3, "total": 4}]}})
    finally:
        store.close()
    page.reload()
    page.locator("#eval-section:not([hidden])").wait_for()
    rows = page.locator("#eval-table tbody tr")
    assert rows.count() == 2
    assert rows.nth(1).inner_text().split("\t")[:4] == ["final", "ft:x", "0.7500", "3/4"]
    assert rows.nth(0).locator("a").get_attribute("href") == "/evals/eval_1/runs/evalrun_1"


def test_job_page_shows_the_sampled_trajectory_of_each_eval_step(page, server, finished_job):
    # Written as agentic RFT's trainer writes them (ml/rft/train.py), on a job of this module.
    calls = [{"id": "call_1", "type": "function", "function": {"name": "multiply", "arguments": '{"a": 123, "b": 45}'}}]
    store = open_store(Settings(home=server.home))
    try:
        for step, answer in ((2, "Answer: 5000"), (4, "Answer: 5535")):
            store.events.add(finished_job.id, "info", f"Sampled trajectory at step {step}", data={
                "step": step, "reward": float(step == 4), "environment_state": {"calls": step // 2},
                "trajectory": [{"role": "user", "content": "What is 123 * 45? <b>bold?</b>"},
                               {"role": "assistant", "content": "", "tool_calls": calls},
                               {"role": "tool", "tool_call_id": "call_1", "name": "multiply", "content": "5535"},
                               {"role": "assistant", "content": answer}]})
    finally:
        store.close()
    page.goto(f"/jobs/{finished_job.id}")
    page.locator("#trajectory-section:not([hidden])").wait_for()
    messages = page.locator("#trajectory li.msg")
    assert [messages.nth(i).get_attribute("data-role") for i in range(messages.count())] == [
        "user", "assistant", "tool", "assistant"]
    assert page.locator("#trajectory-step").input_value() == "4"  # the newest eval step first
    assert "reward 1" in page.locator("#trajectory-reward").inner_text()
    assert messages.nth(0).inner_text().endswith("What is 123 * 45? <b>bold?</b>")  # text, never markup
    assert messages.nth(1).locator(".tool-call").inner_text() == '→ multiply({"a": 123, "b": 45})'
    assert messages.nth(2).locator(".who").text_content() == "tool result · multiply"
    assert messages.nth(2).locator(".text").text_content() == "5535"
    page.select_option("#trajectory-step", "2")
    page.wait_for_function("document.querySelector('#trajectory li.msg:last-child').innerText.includes('5000')")
    assert '"calls": 1' in page.locator("#trajectory-state").text_content()


def test_login_keeps_a_token_in_an_httponly_cookie_and_its_pages_pass_the_csrf_check(page, server, finished_job):
    store = open_store(Settings(home=server.home))
    record, key = store.keys.create("browser-test")
    spare, _ = store.keys.create("browser-spare")
    try:
        page.goto("/")
        assert page.url.endswith("/login?next=%2F")
        page.fill('input[name="api_key"]', "mm-wrong")
        page.click('button[type="submit"]')
        assert "not valid" in page.locator("#login-error").inner_text()
        page.fill('input[name="api_key"]', key)
        page.click('button[type="submit"]')
        page.locator(f'tr[data-job-id="{finished_job.id}"]').wait_for()  # the JS's API calls pass by the cookie
        assert key not in page.url
        (cookie,) = [c for c in page.context.cookies() if c["name"] == "modelmill_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != key  # a token, not the key
        assert page.evaluate("document.cookie") == ""  # invisible to page scripts
        # A script's POST signed in by the cookie (the playground's chat) passes the edge's CSRF check.
        page.goto("/playground?a=modelmill-tiny&b=modelmill-tiny")
        page.fill("#pg-prompt", "hi")
        page.fill("#pg-max-tokens", "2")
        page.click("#pg-run")
        answer = page.locator("#answer-a[data-done]")
        answer.wait_for(timeout=60_000)
        assert not (answer.text_content() or "").startswith("Error"), answer.text_content()
        # So does a form: the Keys page's revoke button.
        page.goto("/keys")
        page.locator(f'tr[data-key-id="{spare.id}"] button').click()
        page.wait_for_url("**/keys")
        assert not page.locator(f'tr[data-key-id="{spare.id}"]').count()
        assert spare.id not in {k.id for k in store.keys.list()}
        page.click(".logout button")
        page.wait_for_url("**/login")
        assert not [c for c in page.context.cookies() if c["name"] == "modelmill_session"]
    finally:  # back to keyless for any test after this one
        for k in store.keys.list():
            if k.id in (record.id, spare.id):
                store.keys.revoke(k.id)
        store.close()
