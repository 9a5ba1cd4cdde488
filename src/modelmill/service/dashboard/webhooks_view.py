"""The Webhooks page: the project's endpoints, and each one's newest deliveries with every attempt
(time, HTTP status or error, duration) and the delivery's last status. Read from the store, the same
rows as GET /v1/webhook_endpoints/{id}/deliveries."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from modelmill.service.api import deps
from modelmill.service.dashboard.views import page_auth, render

router = APIRouter(include_in_schema=False)

DELIVERIES_SHOWN = 50  # per endpoint, newest first


@router.get("/webhooks", dependencies=[Depends(page_auth)])
def webhooks_page(request: Request):
    store, project_id = deps.store(request), deps.project(request)
    endpoints = []
    for e in store.webhooks.list_endpoints(project_id=project_id):
        rows = store.webhooks.deliveries(project_id=project_id, endpoint_id=e.id, limit=DELIVERIES_SHOWN)
        endpoints.append({"endpoint": e,
                          "deliveries": [{"d": d, "attempts": store.webhooks.attempts(d.id)} for d in rows]})
    active = any(x["d"].status in ("pending", "sending") for e in endpoints for x in e["deliveries"])
    return render(request, "webhooks.html", title="Webhooks", endpoints=endpoints, active=active)
