"""What routes get from the app: settings, the store, the shared sampler, the auth check."""

from __future__ import annotations

import threading

from fastapi import Request

from modelmill.settings import Settings
from modelmill.service import auth
from modelmill.service.store import Store

_sampler_lock = threading.Lock()
_context_lock = threading.Lock()


def settings(request: Request) -> Settings:
    return request.app.state.settings


def store(request: Request) -> Store:
    return request.app.state.store


def sampler(request: Request):
    """The app's one ml.sampling.Sampler (created on first use: importing torch is slow)."""
    return app_sampler(request.app)


def grader_context(request: Request):
    """The app's one ml.graders.GraderContext (its judge answers with the shared sampler)."""
    state = request.app.state
    if getattr(state, "grader_context", None) is None:
        with _context_lock:
            if getattr(state, "grader_context", None) is None:
                from modelmill.service import graders

                app = request.app
                state.grader_context = graders.build_context(state.settings, state.store, lambda: app_sampler(app))
    return state.grader_context


def app_sampler(app):
    """The Sampler of `app` (for holders of the app rather than a request, e.g. the judge)."""
    state = app.state
    if getattr(state, "sampler", None) is None:
        with _sampler_lock:
            if getattr(state, "sampler", None) is None:
                from modelmill.ml.sampling import Sampler

                state.sampler = Sampler(cache_size=state.settings.model_cache_size)
    return state.sampler


def require_api_key(request: Request) -> None:
    """A bearer key, or else the dashboard's session cookie holding one (same constant-time check)."""
    authorization = request.headers.get("authorization")
    cookie = request.cookies.get(auth.SESSION_COOKIE)
    if auth.bearer_token(authorization) is None and cookie:
        authorization = f"Bearer {cookie}"
    auth.authenticate(request.app.state.settings, request.app.state.store, authorization)
