"""One place where failures become OpenAI's error envelope:
{"error": {"message", "type", "param", "code"}} with the matching HTTP status.

It is also where the OpenAPI document says so: FastAPI documents a 422 HTTPValidationError for
every route with parameters, which this service never sends (bad parameters are a 400 in the
envelope). document_errors() replaces that with 4XX / 5XX responses of OpenAI's ErrorResponse,
so clients and schema-driven tests (tests/reliability/test_schemathesis.py) see what is sent.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelmill import errors

log = logging.getLogger("modelmill.api")

# Request body/query locations FastAPI prefixes to a parameter path.
_LOCATIONS = {"body", "query", "path", "header", "cookie"}


def envelope(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
             code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": type, "param": param, "code": code}})


# OpenAI's ErrorResponse (../shared/spec/openai-api-subset.json, components Error / ErrorResponse).
ERROR_SCHEMAS = {
    "Error": {"type": "object", "required": ["type", "message", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "code": {"anyOf": [{"type": "string"}, {"type": "null"}]}}},
    "ErrorResponse": {"type": "object", "required": ["error"],
                      "properties": {"error": {"$ref": "#/components/schemas/Error"}}},
}
ERROR_RESPONSES = {
    "4XX": "The request was refused (bad parameter, missing or wrong API key, unknown object, conflict, "
           "too large); the body says why.",
    "5XX": "The server failed; the body says so without internal details.",
}


def install(app: FastAPI) -> None:
    document_errors(app)

    @app.exception_handler(errors.ModelMillError)
    async def modelmill_error(request: Request, exc: errors.ModelMillError):
        if exc.status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(status_code=exc.status, content=exc.to_dict(), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in _LOCATIONS]
        param = _param_path(loc)
        kind = first.get("type", "")
        if kind == "json_invalid":
            return envelope(400, "We could not parse the JSON body of your request. The body must be valid JSON.",
                            code="invalid_json")
        if kind == "missing":
            return envelope(400, f"Missing required parameter: '{param}'.", param=param,
                            code="missing_required_parameter")
        message = first.get("msg", "Invalid request")
        return envelope(400, f"Invalid value for '{param}': {message}" if param else message, param=param,
                        code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return envelope(404, f"Invalid URL ({request.method} {request.url.path})", code="not_found")
        if exc.status_code == 405:
            return envelope(405, f"Method {request.method} is not allowed on {request.url.path}",
                            code="method_not_allowed")
        return envelope(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("%s %s: unexpected error", request.method, request.url.path)
        return envelope(500, "The server had an error while processing your request.", type="server_error",
                        code="internal_error")


def _param_path(loc: list[str]) -> str | None:
    """["method", "supervised", "hyperparameters", "n_epochs"] -> "method.supervised.hyperparameters.n_epochs";
    list indices become [i]; pydantic's union branch tags (e.g. "int", "literal['auto']") are dropped."""
    out = ""
    for part in loc:
        if part.isdigit():
            out += f"[{part}]"
        elif "[" in part or "'" in part or part in ("int", "float", "str", "bool", "constrained-int"):
            continue
        else:
            out += ("." if out else "") + part
    return out or None


def document_errors(app: FastAPI) -> None:
    """Make app.openapi() describe the error responses the handlers above send (see the module
    docstring). Idempotent: FastAPI caches the document and this edits it in place."""
    generate = app.openapi

    def openapi() -> dict:
        doc = generate()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(ERROR_SCHEMAS)
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
        for path_item in doc.get("paths", {}).values():
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status, description in ERROR_RESPONSES.items():
                    responses[status] = {"description": description, **error}
        return doc

    app.openapi = openapi
