"""Evals: OpenAI's /v1/evals API on the grader engine, executed by the job worker.

    requests.py   create / update an eval, create a run: every check that names a field (4xx)
    data.py       data-source items (inline or a JSONL file), item-schema checks, input_messages
    runner.py     execute one run: sample (completions) -> grade every criterion -> output items
    report.py     the HTML report behind a run's report_url (templates/report.html)

Runs are claimed on the lease queue like jobs: store/run_queue.py (EvalRunQueue) holds their SQL.
A fine-tuning job's before/after report (service/jobs/eval_reports.py) is made of ordinary eval runs.
"""
