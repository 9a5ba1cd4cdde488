"""Malformed training files through the HTTP API: submit one (upload + job), run a worker until the
queue is empty, and list every way a case's failure shows wrongly over HTTP.

Shared by tests/reliability/test_malformed_http.py (a stratified sample, in `make test`) and
tools/reliability/figures.py (every file, with the dashboard report's check, in `make reliability`),
so the tool does not import a test module.
"""

from __future__ import annotations

from typing import Callable

from tools.reliability.malformed import Case

GRADER = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
          "reference": "{{item.reference_answer}}", "operation": "eq"}
METHOD = {
    "supervised": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    "preference": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1}}},
    "reinforcement": {"type": "reinforcement", "reinforcement": {"grader": GRADER,
                                                                 "hyperparameters": {"n_epochs": 1}}},
}


def expected_text(case: Case) -> str | None:
    """What the job's error (or one of its error events) must say; None for file-level problems,
    whose wording is checked through the report's code instead."""
    if not case.line:
        return None
    return f"line {case.line}: " + (f"{case.field}: " if case.field else "")


def submit(sdk, case: Case) -> tuple[str, str]:
    """Upload the case's file (purpose fine-tune) and create a job on it: (file id, job id)."""
    f = sdk.files.create(file=(f"{case.category}.jsonl", case.data), purpose="fine-tune")
    assert f.bytes == len(case.data) and f.purpose == "fine-tune"
    job = sdk.fine_tuning.jobs.create(training_file=f.id, model="modelmill-tiny", method=METHOD[case.method])
    assert job.status == "validating_files"
    return f.id, job.id


def run_worker(settings, store) -> int:
    """Run one in-process worker until the queue is empty; how many jobs it ran."""
    from modelmill.service.worker.loop import Worker

    worker, n = Worker(settings, store), 0
    while worker.run_once() is not None:
        n += 1
    return n


def check_job(sdk, http, case: Case, file_id: str, job_id: str, *, with_report: bool = False,
              check_shape: Callable[[dict, str], None] | None = None) -> list[str]:
    """Every way this case's failure shows over HTTP; returns what is wrong ([] if nothing).
    with_report: also ask the dashboard's file report for the exact (line, field, code); it
    tokenizes with modelmill-tiny, which is built once (seconds), so only `make reliability` does.
    check_shape(body, "FineTuningJob"): also check the job object's wire shape (the tests pass
    tests/spec_check.assert_matches, which raises on a mismatch); None: no shape check."""
    wrong = []
    raw = sdk.fine_tuning.jobs.with_raw_response.retrieve(job_id)
    body = raw.http_response.json()
    if check_shape is not None:
        check_shape(body, "FineTuningJob")
    err = body["error"] or {}
    if body["status"] != "failed" or err.get("code") != "invalid_training_file" or err.get("param") != "training_file":
        wrong.append(f"job {body['status']} with error {err}")
    text = expected_text(case)
    if text is not None:
        events = [e.message for e in sdk.fine_tuning.jobs.list_events(job_id, limit=100).data if e.level == "error"]
        if text not in err.get("message", "") and not any(m.startswith(text) for m in events):
            wrong.append(f"{text!r} not in the job error {err.get('message', '')[:300]!r} nor its events")
    if sdk.files.content(file_id).read() != case.data:
        wrong.append("uploaded bytes changed")
    if with_report:
        report = http.get(f"/dashboard/api/files/{file_id}/report",
                          params={"method": case.method, "model": "modelmill-tiny"})
        if report.status_code != 200:
            wrong.append(f"report {report.status_code}: {report.text[:200]}")
        else:
            got = {(p["line"], p["field"], p["code"]) for p in report.json()["problems"]}
            if (case.line, case.field, case.code) not in got:
                wrong.append(f"report lacks {(case.line, case.field, case.code)}: {sorted(got)[:4]}")
    return wrong
