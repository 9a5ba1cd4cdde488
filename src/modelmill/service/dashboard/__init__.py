"""The web dashboard, served by the API process itself at `/`.

Server-rendered Jinja2 pages (templates/) plus a little vanilla JS (static/) that polls JSON
and draws charts with uPlot, vendored under static/vendor/uplot/ (MIT, see its LICENSE and
VERSION; `make vendor-uplot` refreshes it from npm). Nothing is loaded from another host.

    install(app)   # mounts the pages, /dashboard/api/* and /dashboard/static/*

Auth: when API keys exist, pages ask for one (a login form) and keep it in the HttpOnly,
SameSite=Strict cookie `modelmill_key` (auth.SESSION_COOKIE); deps.require_api_key accepts
that cookie, so the pages' JS calls /v1 and /dashboard/api without handling the key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
TEMPLATES_DIR = Path(__file__).parent / "templates"


def install(app: FastAPI) -> None:
    from modelmill.service.dashboard import api, views

    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.include_router(api.router)
    app.include_router(views.router)
    from modelmill.service.dashboard import webhooks_view

    app.include_router(webhooks_view.router)  # /webhooks: endpoints, deliveries and their attempts
    views.install_handlers(app)
