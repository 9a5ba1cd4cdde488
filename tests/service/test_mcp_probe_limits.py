"""The MCP probe at job creation (agentic RFT: the job's MCP servers are started once to list their
tools) is bounded like graders/run: it runs on the graders' executor (service/core/limits.py), not in
the request thread pool; past the project's queue, or after MCP_QUEUE_WAIT_SECONDS without a slot, it
is a 429 naming the field; and all of a job's servers share PROBE_BUDGET_SECONDS to start (a 400
naming the server that found it used up). The sandbox is not needed: ml.mcp_tools.probe is faked."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from modelmill import errors
from modelmill.ml import environments, mcp_tools
from modelmill.service.core.limits import ProjectExecutor
from tests.service.conftest import training_jsonl, upload
from tests.service.helpers import run_async
from tests.service.test_grader_concurrency import Gate, wait_for
from tests.spec_check import assert_matches

PARAM = "method.reinforcement.environment"
GRADER = {"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "a", "operation": "eq"}
SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}


def mcp(name: str = "db", **over) -> dict:
    return {"type": "mcp", "name": name, "source": "print('a server')\n", **over}


def fake_probe(seen: list, sleep: float = 0.0):
    """A stand-in for ml.mcp_servers.probe: records (server, timeout, thread) and lists one tool."""
    def probe(spec, sandbox, timeout):
        seen.append((spec["name"], timeout, threading.current_thread().name))
        time.sleep(sleep)
        return [SimpleNamespace(name=f"{spec['name']}_query", description="Query.", input_schema=SCHEMA)]
    return probe


def agentic_job(client, environment: dict):
    file_id = upload(client, training_jsonl())["id"]
    return client.post("/v1/fine_tuning/jobs", json={
        "model": "modelmill-tiny", "training_file": file_id,
        # no hyperparameters: each "auto", reasoning_effort "default" (it was "auto", a 400, before)
        "method": {"type": "reinforcement", "reinforcement": {"grader": GRADER, "environment": environment}}})


def test_the_probe_runs_on_the_graders_executor_not_the_request_pool(client, monkeypatch):
    seen: list = []
    monkeypatch.setattr(mcp_tools, "probe", fake_probe(seen))
    r = agentic_job(client, {"tools": [mcp()]})
    assert r.status_code == 200, r.text
    assert_matches(r.json(), "FineTuningJob")
    [(name, timeout, thread)] = seen
    assert thread.startswith("modelmill-graders"), thread  # ProjectExecutor("graders")'s own threads
    listed = r.json()["method"]["reinforcement"]["environment"]["tools"][0]["tools"]
    assert [t["name"] for t in listed] == ["db_query"]


def test_a_malformed_environment_is_a_400_before_it_queues(client, monkeypatch):
    seen: list = []
    monkeypatch.setattr(mcp_tools, "probe", fake_probe(seen))
    r = agentic_job(client, {"tools": [mcp(startup_timeout_seconds=0)]})
    assert r.status_code == 400 and r.json()["error"]["param"] == f"{PARAM}.tools[0].startup_timeout_seconds"
    assert seen == [] and getattr(client.app.state, "grader_executor", None) is None  # nothing queued


def test_no_free_slot_is_a_429_naming_the_field(client, monkeypatch):
    seen: list = []
    monkeypatch.setattr(mcp_tools, "probe", fake_probe(seen))
    # One slot in all, taken by another project's grader, and no queue: the probe cannot even wait.
    executor = client.app.state.grader_executor = ProjectExecutor("graders", max_workers=1, per_project=1,
                                                                 max_queued=0)
    gate = Gate()
    held = executor.submit("another-project", gate.task, "grader")
    try:
        wait_for(lambda: gate.started)
        r = agentic_job(client, {"tools": [mcp()]})
        assert r.status_code == 429, r.text
        err = r.json()["error"]
        assert err["param"] == PARAM and err["code"] == "rate_limit_exceeded"
        assert "MCP servers were not started" in err["message"] and r.headers["retry-after"] == "1"
        assert seen == []
        assert client.get("/v1/fine_tuning/jobs").json()["data"] == []  # no job was made
    finally:
        gate.release.set()
        held.result(10)
        executor.shutdown()


def test_a_task_still_queued_after_queue_timeout_is_dropped_with_a_429():
    executor, gate = ProjectExecutor("graders", max_workers=1, per_project=1, max_queued=5), Gate()
    held = executor.submit("a", gate.task, "running")
    try:
        wait_for(lambda: gate.started)

        async def main():
            started = asyncio.get_running_loop().time()
            with pytest.raises(errors.RateLimitError) as refused:
                await executor.run("a", gate.task, "never", queue_timeout=0.3)
            return asyncio.get_running_loop().time() - started, refused.value

        waited, e = run_async(main())
        assert 0.3 <= waited < 2 and e.status == 429 and "waited 0.3 s" in e.message
        assert executor.stats()["queued"] == 0 and gate.started == ["running"]  # dropped, never run
    finally:
        gate.release.set()
        held.result(10)
        executor.shutdown()


def test_all_of_a_jobs_servers_share_one_start_up_budget(monkeypatch):
    seen: list = []
    monkeypatch.setattr(mcp_tools, "probe", fake_probe(seen, sleep=0.6))
    monkeypatch.setattr(mcp_tools, "PROBE_BUDGET_SECONDS", 2.0)
    with pytest.raises(errors.InvalidRequestError) as refused:
        environments.validate_environment({"tools": [mcp("a"), mcp("b"), mcp("c")]}, PARAM)
    e = refused.value
    # a had the whole budget (less than its own 10 s), b what a left, and c less than a second: not started
    assert [name for name, _, _ in seen] == ["a", "b"] and seen[0][1] == pytest.approx(2.0, abs=0.05)
    assert seen[1][1] < 1.45
    assert e.param == f"{PARAM}.tools[2]" and "2 s in all" in e.message
