"""The dashboard's HTML pages and its login / logout.

Pages are server-rendered; the live ones (jobs, job detail, playground) load a small script
that polls /dashboard/api or calls /v1. No inline scripts: the Content-Security-Policy allows
only this server's own files, so the pages work (and are checked to work) fully offline.
Every page shows only the signed-in key's project: another project's job or file is the same
"not found" page as a missing one.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from modelmill import errors
from modelmill.service.core import auth
from modelmill.service.models import registry as model_registry
from modelmill.service.api import deps
from modelmill.service.dashboard import TEMPLATES_DIR, api, evals_view, state

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=TEMPLATES_DIR)

CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
FILE_METHODS = ("supervised", "preference", "reinforcement")


class LoginRequired(Exception):
    """A page was asked for without a valid key; the handler sends the browser to /login."""


def page_auth(request: Request) -> None:
    try:
        deps.require_api_key(request)
    except errors.AuthenticationError:
        raise LoginRequired() from None


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, exc: LoginRequired):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def render(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
    store = deps.store(request)
    context.update(request=request, evals_url=evals_url(request.app), auth_enabled=store.keys.any(),
                   page=name.removesuffix(".html"))
    response = templates.TemplateResponse(request, name, context, status_code=status)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def not_found(request: Request, message: str) -> HTMLResponse:
    return render(request, "error.html", status=404, title="Not found", message=message)


def evals_url(app: FastAPI) -> str | None:
    """Where the nav's "Evals" link goes: a GET page under /evals without path parameters (the
    dashboard's own /evals index, see evals_page), when the app has one; None otherwise."""
    pages = sorted(p for p in _get_paths(app.routes) if (p == "/evals" or p.startswith("/evals/")) and "{" not in p)
    return pages[0] if pages else None


def _get_paths(routes, prefix: str = ""):
    """Full paths of the GET routes, looking inside included routers (FastAPI wraps each one)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _get_paths(inner.routes, prefix + getattr(getattr(r, "include_context", None), "prefix", ""))
        elif "GET" in (getattr(r, "methods", None) or ()):
            yield prefix + getattr(r, "path", "")


# -- pages ------------------------------------------------------------------------------

@router.get("/", dependencies=[Depends(page_auth)])
def jobs_page(request: Request):
    return render(request, "jobs.html", title="Jobs")


@router.get("/jobs/{job_id}", dependencies=[Depends(page_auth)])
def job_page(job_id: str, request: Request):
    try:
        job = deps.store(request).jobs.get(job_id, project_id=deps.project(request))
    except errors.NotFoundError as e:
        return not_found(request, e.message)
    return render(request, "job.html", title=job.id, job=job)


@router.get("/files", dependencies=[Depends(page_auth)])
def files_page(request: Request):
    files = deps.store(request).files.list(limit=1000, project_id=deps.project(request)).items
    return render(request, "files.html", title="Files", files=files)


@router.get("/files/{file_id}", dependencies=[Depends(page_auth)])
def file_page(file_id: str, request: Request, method: str | None = None, model: str | None = None):
    if method not in (None, "", *FILE_METHODS):
        method = None
    try:
        report = state.file_reports(request).get(file_id, method=method or None, model=model or None,
                                                 project_id=deps.project(request))
        error = None
    except errors.NotFoundError as e:
        if e.param == "file_id":
            return not_found(request, e.message)
        report, error = None, e.message
    except errors.ModelMillError as e:  # e.g. no validator for a method yet
        report, error = None, e.message
    record = deps.store(request).files.get(file_id, project_id=deps.project(request))
    models = [m.id for m in model_registry.list_served(deps.store(request), deps.settings(request)) if m.kind == "base"]
    return render(request, "file.html", title=record.filename, file=record, report=report, error=error,
                  methods=FILE_METHODS, chosen_method=method, models=models, chosen_model=model)


@router.get("/models", dependencies=[Depends(page_auth)])
def models_page(request: Request):
    settings, store = deps.settings(request), deps.store(request)
    rows = [api.model_row(m, settings) for m in model_registry.list_served(store, settings, deps.project(request))]
    return render(request, "models.html", title="Models", models=rows, export_formats=_export_formats(settings))


def _export_formats(settings) -> list[str]:
    """The download links of a fine-tuned model's row: gguf only where this server has the converter."""
    from modelmill.ml import export

    try:
        export.gguf_converter(settings.gguf_converter)
    except errors.InvalidRequestError:
        return ["adapter", "merged"]
    return ["adapter", "merged", "gguf"]


@router.get("/evals", dependencies=[Depends(page_auth)])
def evals_page(request: Request):
    """Every eval (newest first) with its runs, each linking to the run's report page."""
    evals = evals_view.eval_rows(deps.store(request), deps.project(request))
    active = any(r["active"] for ev in evals for r in ev["runs"])
    return render(request, "evals.html", title="Evals", evals=evals, active=active)


@router.get("/playground", dependencies=[Depends(page_auth)])
def playground_page(request: Request, a: str | None = None, b: str | None = None):
    settings, store = deps.settings(request), deps.store(request)
    models = [m.id for m in model_registry.list_served(store, settings, deps.project(request))]
    fine_tuned = [m for m in models if m.startswith("ft:") and ":ckpt-step-" not in m]
    left = a if a in models else (settings.default_model if settings.default_model in models else models[0])
    right = b if b in models else (fine_tuned[-1] if fine_tuned else left)
    return render(request, "playground.html", title="Playground", models=models, left=left, right=right)


@router.get("/keys", dependencies=[Depends(page_auth)])
def keys_page(request: Request):
    """The project's own API keys, each with a revoke button (never another project's keys)."""
    store, project_id = deps.store(request), deps.project(request)
    keys = [k for k in store.keys.list() if k.project_id == project_id]
    current = store.keys.session_key_id(request.cookies.get(auth.SESSION_COOKIE))
    return render(request, "keys.html", title="API keys", keys=keys, current=current)


@router.post("/keys/{key_id}/revoke", dependencies=[Depends(page_auth)])
def revoke_key(key_id: str, request: Request):
    """Revoke one of the project's keys, with its sessions (the edge has checked this form came
    from this server's own page). Revoking the key this session signed in with signs it out."""
    store = deps.store(request)
    try:
        store.keys.revoke(key_id, project_id=deps.project(request))
    except errors.NotFoundError as e:
        return not_found(request, e.message)
    signed_in = store.keys.session_key_id(request.cookies.get(auth.SESSION_COOKIE)) is not None
    return RedirectResponse("/keys" if signed_in or not store.keys.any() else "/login", status_code=303)


# -- login / logout ---------------------------------------------------------------------

@router.get("/login")
def login_page(request: Request, next: str = "/"):
    if not deps.store(request).keys.any():
        if not auth.is_loopback(deps.settings(request).host):  # every request is refused: say why
            return render(request, "error.html", status=401, title="No API keys",
                          message="This server has no API keys and is not bound to loopback. "
                                  "Create one with `modelmill keys create`.")
        return RedirectResponse(_safe_next(next), status_code=303)
    return render(request, "login.html", title="Sign in", next=_safe_next(next), error=None)


@router.post("/login")
async def login(request: Request):
    form = await request.form()
    key, target = str(form.get("api_key") or "").strip(), _safe_next(str(form.get("next") or "/"))
    refused, token = await run_in_threadpool(_sign_in, deps.store(request), deps.settings(request), key)
    if refused:
        return render(request, "login.html", status=401, title="Sign in", next=target,
                      error="That key is not valid.")
    response = RedirectResponse(target, status_code=303)
    if token is not None:
        # The cookie holds a login token, not the key (auth.SESSION_COOKIE). HttpOnly: page scripts
        # never see it; SameSite=Strict plus the edge's CSRF check: other sites' pages can't use it.
        response.set_cookie(auth.SESSION_COOKIE, token, httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
    return response


def _sign_in(store, settings, key: str) -> tuple[bool, str | None]:
    """(refused, login token): a new session for a valid key; (False, None) on a keyless server."""
    if not store.keys.any():
        return False, None
    record = store.keys.verify(key)
    if record is None:
        return True, None
    store.keys.sweep_sessions(settings.login_idle_seconds)  # keeps the table small
    return False, store.keys.start_session(record)


@router.post("/logout")
def logout(request: Request) -> Response:
    deps.store(request).keys.end_session(request.cookies.get(auth.SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _safe_next(target: str) -> str:
    """Only a path on this server (no scheme, no host, no "//evil.example")."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


# -- template helpers -------------------------------------------------------------------

def _when(ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


templates.env.filters["when"] = _when
templates.env.filters["size"] = _size
