"""Who may call the API.

- When the store holds API keys, every request needs `Authorization: Bearer <key>` with
  one of them (checked by hash, in constant time), or the dashboard's session cookie
  (SESSION_COOKIE) holding a live login token (see identify()).
- With no keys, any request is accepted, but only while the server binds a loopback
  address; create_app refuses to start on any other address without keys.

Each key belongs to a project (store/projects.py); authenticate() returns it, and the request
acts in it. Keyless loopback requests act in the default project.
Key plaintext is never logged, stored or echoed: error messages name no key.
"""

from __future__ import annotations

import ipaddress

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.store import Store
from modelmill.service.store.records import DEFAULT_PROJECT_ID

# The dashboard's session cookie (HttpOnly, SameSite=Strict). It holds a login token standing for
# the key signed in with (store.keys.start_session), never the key: revoking the key ends it, and it
# expires after settings.login_idle_seconds unused. Requests it authenticates must pass the CSRF
# check (api/edge.py) when their method is unsafe.
SESSION_COOKIE = "modelmill_session"


def create_key(store: Store, name: str, project: str | None = None) -> str:
    """Create an API key labelled `name` for the project called `project` (created if new; None:
    the default project); return its plaintext (shown once, stored hashed)."""
    project_id = store.projects.ensure(project).id if project else DEFAULT_PROJECT_ID
    return store.keys.create(name, project_id)[1]


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings, store: Store) -> None:
    """Refuse to serve a non-loopback address when no API key exists."""
    if not is_loopback(settings.host) and not store.keys.any():
        raise errors.AuthenticationError(
            f"Refusing to listen on {settings.host} without API keys: anyone who can reach it could use it. "
            "Create a key with `modelmill keys create`, or bind 127.0.0.1.", code="no_api_keys")


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate(settings: Settings, store: Store, authorization: str | None) -> str:
    """The project id this request acts in; AuthenticationError (401) unless it may proceed."""
    if store.keys.any():
        token = bearer_token(authorization)
        if token is None:
            raise errors.AuthenticationError(
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key")
        key = store.keys.verify(token)
        if key is None:
            raise errors.AuthenticationError("Incorrect API key provided.", code="invalid_api_key")
        return key.project_id
    if not is_loopback(settings.host):
        raise errors.AuthenticationError("This server has no API keys and is not bound to loopback.",
                                         code="no_api_keys")
    return DEFAULT_PROJECT_ID


def identify(settings: Settings, store: Store, authorization: str | None,
             session_token: str | None) -> tuple[str, bool]:
    """(project id, by_cookie) for a request: its bearer key when it sends one (a header wins), else
    its session cookie's login token, else authenticate() (keyless loopback, or a 401).
    by_cookie tells the caller the browser's cookie vouched for the request (CSRF matters)."""
    if bearer_token(authorization) is None and session_token and store.keys.any():
        project_id = store.keys.session_project(session_token, settings.login_idle_seconds)
        if project_id is None:
            raise errors.AuthenticationError("Your dashboard session has expired or its key was revoked; "
                                             "sign in again.", code="invalid_session")
        return project_id, True
    return authenticate(settings, store, authorization), False
