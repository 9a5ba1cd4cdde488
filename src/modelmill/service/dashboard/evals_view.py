"""The Evals page's rows: each eval (newest first) with its runs, their counts and the pass rate
of each testing criterion, read from the store (the same numbers as /v1/evals/{id}/runs)."""

from __future__ import annotations

from modelmill.service.store import Store
from modelmill.service.store.evals import RUN_TERMINAL, EvalRecord, EvalRunRecord

EVALS_SHOWN = 100
RUNS_SHOWN = 50


def eval_rows(store: Store, project_id: str | None = None, limit: int = EVALS_SHOWN,
              runs_limit: int = RUNS_SHOWN) -> list[dict]:
    """Evals of project_id (None: every project) newest first, each with its newest `runs_limit` runs."""
    out = []
    for ev in store.evals.list(limit=limit, order="desc", project_id=project_id).items:
        page = store.evals.list_runs(ev.id, limit=runs_limit, order="desc")
        out.append(eval_row(ev, page.items, page.has_more))
    return out


def eval_row(ev: EvalRecord, runs: list[EvalRunRecord], more_runs: bool = False) -> dict:
    criteria = [c["name"] for c in ev.testing_criteria]
    return {"id": ev.id, "name": ev.name, "created_at": ev.created_at, "criteria": criteria,
            "criteria_types": {c["name"]: c["type"] for c in ev.testing_criteria},
            "runs": [run_row(r, criteria) for r in runs], "more_runs": more_runs}


def run_row(run: EvalRunRecord, criteria: list[str]) -> dict:
    """One run: status, model, passed/total, {criterion: pass rate or None}, its report page."""
    counts = run.result_counts or {}
    per = {c.get("testing_criteria"): c for c in run.per_testing_criteria_results or []}
    rates = {}
    for name in criteria:
        c = per.get(name) or {}
        graded = int(c.get("passed") or 0) + int(c.get("failed") or 0)
        rates[name] = (int(c.get("passed") or 0) / graded) if graded else None
    return {"id": run.id, "name": run.name, "status": run.status, "model": run.model,
            "source": (run.data_source or {}).get("type"), "created_at": run.created_at,
            "passed": int(counts.get("passed") or 0), "failed": int(counts.get("failed") or 0),
            "errored": int(counts.get("errored") or 0), "total": int(counts.get("total") or 0),
            "total_items": run.total_items, "rates": rates, "active": run.status not in RUN_TERMINAL,
            "job_id": run.job_id, "job_label": run.job_label, "error": run.error,
            "report_url": f"/evals/{run.eval_id}/runs/{run.id}"}
