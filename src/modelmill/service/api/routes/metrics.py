"""GET /metrics: Prometheus' text format (service/core/metrics.py), outside /v1.

Who may read it is MODELMILL_METRICS (docs/operations.md): "key" (the default) needs any valid API
key, as a bearer token (Prometheus' `authorization` scrape setting) or a dashboard session;
"public" needs none; "off" answers 404 as for any unknown path. The figures are server-wide
aggregates labelled only by status, method, kind or queue: no ids, names or content.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from modelmill import errors
from modelmill.service.api import deps

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    mode = deps.settings(request).metrics
    if mode == "off":
        raise errors.NotFoundError("Not Found")
    if mode == "key":
        await run_in_threadpool(deps.require_api_key, request)  # a key lookup reads the store
    from modelmill.service.core import metrics as service_metrics

    body, content_type = await run_in_threadpool(service_metrics.render, deps.store(request))
    return Response(body, media_type=content_type)
