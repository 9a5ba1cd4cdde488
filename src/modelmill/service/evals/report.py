"""The HTML report behind a run's report_url: per-criterion pass rates and the failing items.

Rendered on the server with Jinja2 (FastAPI's Jinja2Templates, autoescaped); the page is
self-contained (inline CSS, no scripts, no CDN). It refreshes itself while the run is active.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from modelmill.service.store import Store
from modelmill.service.store.evals import OutputItemRecord

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# The page has no scripts and loads nothing: only its own inline <style> may apply.
CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"
# Failing items shown on the page (the API's output_items?status=fail lists them all).
MAX_FAILING_SHOWN = 100


def render(request: Request, store: Store, eval_id: str, run_id: str, *, project_id: str):
    """The report page of a run of `project_id` (another project's run is not found, like a missing one)."""
    ev = store.evals.get(eval_id, project_id=project_id)
    run = store.evals.get_run(eval_id, run_id, project_id=project_id)
    items = store.evals.all_items(run_id)
    failing = [i for i in items if i.status != "pass"]
    context = {
        "eval": ev, "run": run, "criteria": criteria_summary(ev.testing_criteria, items),
        "counts": run.result_counts, "failing": [_item_view(i) for i in failing[:MAX_FAILING_SHOWN]],
        "failing_total": len(failing), "active": run.status in ("queued", "in_progress"),
    }
    response = TEMPLATES.TemplateResponse(request, "report.html", context)
    response.headers["Content-Security-Policy"] = CSP
    return response


def criteria_summary(criteria: list[dict], items: list[OutputItemRecord]) -> list[dict]:
    """Per criterion: name, type, passed, failed, pass rate and mean score over the graded items."""
    out = []
    for spec in criteria:
        results = [r for it in items for r in it.results if r.get("name") == spec["name"]]
        passed = sum(1 for r in results if r.get("passed"))
        n = len(results)
        out.append({"name": spec["name"], "type": spec["type"], "passed": passed, "failed": n - passed,
                    "rate": passed / n if n else 0.0,
                    "mean_score": sum(float(r.get("score") or 0) for r in results) / n if n else 0.0})
    return out


def _item_view(it: OutputItemRecord) -> dict:
    sample = it.sample or {}
    return {"id": it.id, "index": it.datasource_item_id, "status": it.status, "item": it.datasource_item,
            "input": sample.get("input") or [], "output": [m.get("content", "") for m in sample.get("output") or []],
            "error": sample.get("error"), "results": it.results}
