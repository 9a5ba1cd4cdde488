"""Bad input through the HTTP API: a stratified sample of the malformed corpus (a few files of
every category, every method) is uploaded with the official openai SDK (purpose fine-tune, as
OpenAI does: content is checked when a job uses the file), a job is created for each, and the
worker's validation must fail every job with OpenAI's error shape naming the line and field,
never a 5xx. The uploaded bytes come back unchanged (nothing lost), and the dashboard's file
report lists the exact (line, field, code) problem (that last check, and every file rather than
a sample, in `make reliability`: tests/reliability/figures.py)."""

from __future__ import annotations

import openai
import pytest

from modelmill.service.worker import Worker
from tests.reliability.conftest import MAX_UPLOAD_BYTES
from tests.reliability.malformed import Case, sample
from tests.spec_check import assert_matches

PER_CATEGORY = 6  # 115 files: every category, spread over methods and kinds

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
    f = sdk.files.create(file=(f"{case.category}.jsonl", case.data), purpose="fine-tune")
    assert f.bytes == len(case.data) and f.purpose == "fine-tune"
    job = sdk.fine_tuning.jobs.create(training_file=f.id, model="modelmill-tiny", method=METHOD[case.method])
    assert job.status == "validating_files"
    return f.id, job.id


def run_worker(settings, store) -> int:
    worker, n = Worker(settings, store), 0
    while worker.run_once() is not None:
        n += 1
    return n


def check_job(sdk, http, case: Case, file_id: str, job_id: str, *, with_report: bool = False) -> list[str]:
    """Every way this case's failure shows over HTTP; returns what is wrong ([] if nothing).
    with_report: also ask the dashboard's file report for the exact (line, field, code); it
    tokenizes with modelmill-tiny, which is built once (seconds), so only `make reliability` does."""
    wrong = []
    raw = sdk.fine_tuning.jobs.with_raw_response.retrieve(job_id)
    body = raw.http_response.json()
    assert_matches(body, "FineTuningJob")
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


def test_sample_of_malformed_files_fails_jobs_with_line_and_field(bad_input_service, malformed_cases):
    settings, store, http, sdk = bad_input_service
    statuses: list[int] = []
    http.event_hooks["response"].append(lambda r: statuses.append(r.status_code))
    picked = sample(malformed_cases, PER_CATEGORY, max_bytes=MAX_UPLOAD_BYTES)
    assert len(picked) >= 100 and len({c.category for c in picked}) == len({c.category for c in malformed_cases})
    submitted = [(case, *submit(sdk, case)) for case in picked]
    assert run_worker(settings, store) == len(picked)

    problems = {case.name: w for case, f, j in submitted if (w := check_job(sdk, http, case, f, j))}
    assert not problems, problems
    assert statuses and max(statuses) < 500


def test_upload_rejections_are_400_or_413_in_openai_envelope(bad_input_service):
    _, _, http, sdk = bad_input_service
    rejected = [
        http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "fine-tuning"}),
        http.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")}),
        http.post("/v1/files", data={"purpose": "fine-tune"}),
        http.post("/v1/files", content=b'{"messages": []}', headers={"content-type": "application/json"}),
        http.post("/v1/files", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}),
        http.post("/v1/files", files={"file": ("big.jsonl", b"x" * (MAX_UPLOAD_BYTES + 1))},
                  data={"purpose": "fine-tune"}),
        http.post("/v1/fine_tuning/jobs", json={"model": "modelmill-tiny", "training_file": "file-nope"}),
    ]
    for r in rejected:
        assert r.status_code in (400, 404, 413), (r.request.url, r.status_code, r.text)
        assert_matches(r.json(), "ErrorResponse")
        assert r.json()["error"]["message"]
    assert rejected[0].json()["error"]["param"] == "purpose"
    assert rejected[5].status_code == 413
    with pytest.raises(openai.BadRequestError) as e:  # what the SDK makes of the same 400
        sdk.files.create(file=("a.jsonl", b"{}\n"), purpose="not-a-purpose")
    assert e.value.status_code == 400 and e.value.body["param"] == "purpose"
