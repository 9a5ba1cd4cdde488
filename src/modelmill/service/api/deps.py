"""What routes get from the app: settings, the store, the shared sampler, the auth check and the
caller's project (every route scopes what it reads and writes to it).

Two forms of the same accessors:
- `Depends(get_settings)`, `Depends(get_store)`, `Depends(get_project)`, `Depends(authenticated)`:
  the dependencies, `async def` so FastAPI awaits them on the event loop. FastAPI runs a plain `def`
  dependency in anyio's thread pool, one round trip each (a hand-off to a pool thread and back, each
  side waiting for the GIL): a /v1 GET resolved 7 of them (auth, the query check, store, settings,
  project, the route, its response check), and with 50 clients while a job trained those hand-offs
  were most of the server's time (RELIABILITY.md, Load). These only read the app's or the request's
  state, so they run inline; only a key lookup still goes to a thread (it reads SQLite).
- `settings(request)`, `store(request)`, `project(request)`, `require_api_key(request)`: plain
  functions for code that holds a request (async routes, dashboard views). A plain `Depends(store)`
  still works, at the cost of a thread-pool round trip.
"""

from __future__ import annotations

import threading

import anyio.to_thread
from fastapi import Request

from modelmill.settings import Settings
from modelmill.service.core import auth
from modelmill.service.models.sampler import shared_sampler
from modelmill.service.store import Store

_context_lock = threading.Lock()


def settings(request: Request) -> Settings:
    return request.app.state.settings


def store(request: Request) -> Store:
    return request.app.state.store


def sampler(request: Request):
    """The app's ml.sampling.Sampler: the process's one (created on first use: importing torch is slow)."""
    return app_sampler(request.app)


def grader_context(request: Request):
    """The app's ml.graders.GraderContext for the caller's project (its judge answers with the shared
    sampler, and only with models that project may use); one per project, made on first use."""
    state, project_id = request.app.state, project(request)
    with _context_lock:
        contexts = getattr(state, "grader_contexts", None)
        if contexts is None:
            contexts = state.grader_contexts = {}
        if project_id not in contexts:
            from modelmill.service.graders import requests as graders

            app = request.app
            contexts[project_id] = graders.build_context(state.settings, state.store, lambda: app_sampler(app),
                                                         project_id=project_id)
        return contexts[project_id]


def grader_executor(request: Request):
    """The app's service.core.limits.ProjectExecutor for graders/run (made on first use from the settings'
    grader_concurrency, grader_project_concurrency and grader_queue)."""
    return _project_executor(request, "grader_executor", lambda s: dict(
        name="graders", max_workers=s.grader_concurrency, per_project=s.grader_project_concurrency,
        max_queued=s.grader_queue))


def chat_executor(request: Request):
    """The app's service.core.limits.ProjectExecutor for chat completions (generation and tokenisation),
    made on first use from the settings' chat_concurrency, chat_project_concurrency and chat_queue."""
    return _project_executor(request, "chat_executor", lambda s: dict(
        name="chat completions", max_workers=s.chat_concurrency, per_project=s.chat_project_concurrency,
        max_queued=s.chat_queue))


def _project_executor(request: Request, attr: str, limits):
    """app.state.<attr>: a ProjectExecutor made once, on first use, from limits(settings) -> its arguments."""
    state = request.app.state
    with _context_lock:
        executor = getattr(state, attr, None)
        if executor is None:
            from modelmill.service.core.limits import ProjectExecutor

            executor = ProjectExecutor(**limits(state.settings))
            setattr(state, attr, executor)
        return executor


def app_sampler(app):
    """The Sampler of `app` (for holders of the app rather than a request, e.g. the judge): the one
    it was made with (create_app(sampler=...)), else the process's one (service/models/sampler.py), which
    the in-process worker's eval runs and judges share."""
    injected = getattr(app.state, "sampler", None)
    return injected if injected is not None else shared_sampler(app.state.settings)


def require_api_key(request: Request) -> None:
    """A bearer key, or else the dashboard's session cookie (a login token, auth.identify).
    Records the key's project on the request (see project()). The edge (api/edge.py) has already
    done this, before reading the body, for every unsafe method: then its answer is reused."""
    if getattr(request.state, "project_id", None) is not None:
        return
    request.state.project_id, _ = auth.identify(request.app.state.settings, request.app.state.store,
                                                request.headers.get("authorization"),
                                                request.cookies.get(auth.SESSION_COOKIE))


def project(request: Request) -> str:
    """The id of the project the caller's key belongs to (authenticating now if no dependency has)."""
    project_id = getattr(request.state, "project_id", None)
    if project_id is None:
        require_api_key(request)
        project_id = request.state.project_id
    return project_id


# -- the dependencies (see the module docstring: async so that FastAPI runs them inline) -----------


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def authenticated(request: Request) -> None:
    """require_api_key as a router dependency: nothing to do when the edge has authenticated the
    request (every unsafe method); else the key lookup on a pool thread (it reads the store)."""
    if getattr(request.state, "project_id", None) is None:
        await anyio.to_thread.run_sync(require_api_key, request)


async def get_project(request: Request) -> str:
    """project() as a dependency."""
    await authenticated(request)
    return request.state.project_id
