"""The edge: what every request passes before FastAPI reads a byte of its body.

A pure ASGI middleware wrapping the whole app (api/app.py), because FastAPI parses a route's body
parameters before its dependencies run: with auth as a dependency, a 40 MB JSON body without a key
was parsed in full before its 401. Here, for every unsafe method (POST, PUT, PATCH, DELETE):

1. Authentication (auth.identify): a bearer key, or the dashboard's login-token cookie. Without a
   valid one the answer is a 401 before the body is read (the server never receives more than
   uvicorn's 64 KiB read-ahead; uvicorn drops the rest as it arrives).
2. CSRF: a request the cookie vouches for must show it comes from this server's own pages: a
   `Sec-Fetch-Site` of same-origin / none, or an `Origin` whose host:port is this request's Host
   (and neither may say otherwise; `Origin: null` says nothing). SameSite=Strict is not enough: it treats other ports of the
   same host as the same site. `/login` and `/logout` need the same proof; bearer-key requests
   (no ambient credential a page could borrow) are not checked. A request with no credential at
   all (a keyless loopback server) is refused only when its headers say cross-site.
3. A body cap per route kind, counted while the body streams in (Content-Length, when sent, lets
   a too-large body be refused before any of it is read): uploads (multipart, UPLOAD_PATHS)
   settings.max_upload_bytes plus the form's overhead; an Upload's part (PART_PATH) OpenAI's 64 MiB
   plus that overhead; `/login` and `/logout` LOGIN_MAX_BYTES;
   anything else (JSON) settings.max_json_bytes. Past it: a 413 in OpenAI's error shape.
4. Text hygiene (text_hygiene.py): NUL characters or unpaired UTF-16 surrogates anywhere in a
   JSON body, the query string or the path are a 400 naming the field, once, here, instead of a
   500 wherever the text would later be stored or encoded. So is JSON nested past
   text_hygiene.MAX_JSON_DEPTH (template rendering, pydantic and json.dumps would recurse past
   Python's limit).

Safe methods (GET, HEAD, OPTIONS) carry no body worth reading: their auth stays in the routes'
dependency (deps.require_api_key), and only the query and path are checked here.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import JSONResponse, RedirectResponse

from modelmill import errors
from modelmill.service.core import auth
from modelmill.service.api import text_hygiene
from modelmill.service.api.uploads import FORM_OVERHEAD_BYTES
from modelmill.service.store.uploads import MAX_PART_BYTES

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOGIN_PATHS = frozenset({"/login", "/logout"})
UPLOAD_PATHS = frozenset({"/v1/files"})  # the routes that take multipart/form-data (api/uploads.py)
PART_PATH = re.compile(r"/v1/uploads/[^/]+/parts")  # an Upload's part: multipart too, capped at OpenAI's 64 MiB
LOGIN_MAX_BYTES = 16 * 1024  # a sign-in form is a key and a `next` path
SAME_ORIGIN_FETCH_SITES = frozenset({"same-origin", "none"})  # "none": typed or bookmarked by the user


def error(status: int, message: str, *, code: str | None, param: str | None = None, headers=None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers, content={"error": {
        "message": message, "type": "invalid_request_error", "param": param, "code": code}})


def too_large(limit: int, setting: str | None) -> JSONResponse:
    where = f" (set by {setting})" if setting else ""
    return error(413, f"Request body is larger than this route's limit of {limit} bytes{where}.",
                 code="request_too_large")


class Edge:
    def __init__(self, app, settings, store):
        self.app, self.settings, self.store = app, settings, store

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bad = text_hygiene.check_path_and_query(scope["path"], scope.get("query_string", b""))
        if bad is not None:
            await bad(scope, receive, send)
            return
        if scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refused = await self._admit(scope, headers)
        if refused is not None:
            await refused(scope, receive, send)
            return
        limit, setting = self._limit(scope["path"])
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await too_large(limit, setting)(scope, receive, send)
            return
        if _streamed(scope["path"]):  # streamed by the route itself: count as it reads
            await self._counted(scope, receive, send, limit, setting)
            return
        try:
            body = await _read_capped(receive, limit)
        except _Disconnected:
            return  # nobody to answer
        if body is None:
            await too_large(limit, setting)(scope, receive, send)
            return
        bad = text_hygiene.check_json_body(body)
        if bad is not None:
            await bad(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _admit(self, scope, headers: Headers):
        """None when the request may go on (its project recorded in scope["state"]), else the response."""
        if scope["path"] in LOGIN_PATHS:
            if not same_origin(headers):
                return _csrf_refusal()
            return None
        session = _cookie(headers, auth.SESSION_COOKIE)
        try:
            project_id, by_cookie = await anyio.to_thread.run_sync(
                auth.identify, self.settings, self.store, headers.get("authorization"), session)
        except errors.AuthenticationError as e:
            if "text/html" in headers.get("accept", "") and not scope["path"].startswith("/v1/"):
                return RedirectResponse("/login", status_code=303)  # a dashboard form whose session ended
            return error(401, e.message, code=e.code, headers={"WWW-Authenticate": "Bearer"})
        if by_cookie and not same_origin(headers):
            return _csrf_refusal()
        if not by_cookie and auth.bearer_token(headers.get("authorization")) is None and cross_site(headers):
            return _csrf_refusal()  # keyless loopback: still no requests forged by other sites' pages
        scope.setdefault("state", {})["project_id"] = project_id
        return None

    def _limit(self, path: str) -> tuple[int, str | None]:
        if path in LOGIN_PATHS:
            return LOGIN_MAX_BYTES, None
        if path in UPLOAD_PATHS:
            return self.settings.max_upload_bytes + FORM_OVERHEAD_BYTES, "MODELMILL_MAX_UPLOAD_BYTES"
        if PART_PATH.fullmatch(path):
            return MAX_PART_BYTES + FORM_OVERHEAD_BYTES, None
        return self.settings.max_json_bytes, "MODELMILL_MAX_JSON_BYTES"

    async def _counted(self, scope, receive, send, limit: int, setting: str | None) -> None:
        """Run the app with a receive() that, past `limit`, reports the client gone (the app stops
        reading and discards what it has: uploads.py removes its temp blob), and a send() that then
        answers with the 413 in place of whatever the app answers (unless a response had started)."""
        seen, over, started, replaced = 0, False, False, False

        async def counting_receive():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started, replaced
            if replaced:
                return  # the rest of the app's own answer
            if over and not started and message["type"] == "http.response.start":
                replaced = True
                await too_large(limit, setting)(scope, _no_body, send)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, guarded_send)


def _streamed(path: str) -> bool:
    """A multipart route whose body the route streams to disk itself (api/uploads.py)."""
    return path in UPLOAD_PATHS or PART_PATH.fullmatch(path) is not None


def same_origin(headers: Headers) -> bool:
    """The browser says this request comes from this server's own pages: Sec-Fetch-Site and Origin
    each, when sent, say so, and at least one of them is sent (every current browser sends Origin
    on a POST; a non-browser client has no cookie jar worth forging through)."""
    site, origin = headers.get("sec-fetch-site"), _origin(headers)
    if site is None and origin is None:
        return False
    if site is not None and site.lower() not in SAME_ORIGIN_FETCH_SITES:
        return False
    return origin is None or _origin_host(origin) == (headers.get("host") or "").lower()


def cross_site(headers: Headers) -> bool:
    """The browser says this request comes from another site's page (the keyless-server check)."""
    site, origin = headers.get("sec-fetch-site"), _origin(headers)
    if site is not None and site.lower() not in SAME_ORIGIN_FETCH_SITES:
        return True
    return origin is not None and _origin_host(origin) != (headers.get("host") or "").lower()


def _origin(headers: Headers) -> str | None:
    """The Origin header, None when absent or "null": a browser sends "null" for its own pages' form
    POSTs under `Referrer-Policy: no-referrer` (the dashboard's), so it proves nothing either way,
    and Sec-Fetch-Site decides."""
    origin = headers.get("origin")
    return None if origin is None or origin.strip() == "null" else origin


def _origin_host(origin: str) -> str:
    """"http://Host:8000" -> "host:8000"; anything unparsable -> "" (matches nothing)."""
    parts = urlsplit(origin.strip())
    if not parts.scheme or not parts.netloc:
        return ""
    default = {"http": ":80", "https": ":443"}.get(parts.scheme.lower(), "")
    netloc = parts.netloc.lower()
    return netloc[: -len(default)] if default and netloc.endswith(default) else netloc


def _csrf_refusal() -> JSONResponse:
    return error(403, "Cross-site request refused: a request signed in by the dashboard's cookie must come "
                      "from this server's own pages (same-origin Origin or Sec-Fetch-Site header). "
                      "API clients should send 'Authorization: Bearer <key>' instead.", code="csrf_failed")


def _cookie(headers: Headers, name: str) -> str | None:
    raw = headers.get("cookie")
    return cookie_parser(raw).get(name) if raw else None  # Starlette's own parser, as request.cookies


class _Disconnected(Exception):
    pass


async def _read_capped(receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes `limit` (the rest is never read).
    Raises _Disconnected when the client goes away first."""
    chunks, seen = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected()
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive() that hands the app the body already read, then the real channel (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _no_body():
    return {"type": "http.disconnect"}
