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
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else getattr(exc, "headers", None)
        return JSONResponse(status_code=exc.status, content=exc.to_dict(), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        unknown = _extra_fields(exc.errors(), getattr(exc, "body", None))
        if unknown:
            return _unrecognized(unknown)
        first = _most_specific(exc.errors())
        loc = [str(p) for p in first.get("loc", ()) if p not in _LOCATIONS]
        param = _param_path(loc)
        kind = first.get("type", "")
        if kind == "json_invalid":
            return envelope(400, "We could not parse the JSON body of your request. The body must be valid JSON.",
                            code="invalid_json")
        if kind == "missing" and not param:  # the whole body (loc is just "body"), not one of its fields
            return envelope(400, "The request body is missing: this endpoint expects a JSON object.",
                            code="missing_required_parameter")
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


def _extra_fields(errs, body) -> list[str]:
    """The dotted paths of the fields pydantic refused as extra (OpenAIRequest forbids them), in
    pydantic's order. They win over any other error of the same request: a misspelled required field
    is also reported missing, and the misspelling is the more useful thing to name.

    An object that also failed on one of its own fields does not count: when a value matched no
    branch of a union of models, pydantic also reports the other branches' fields as "extra" to each
    branch, and those are not the caller's unknown fields. The path is read off the body itself, which drops the union
    branch tags pydantic puts in `loc` (a tag is never a key of the body)."""
    locs = [tuple(e.get("loc", ())) for e in errs]
    out = []
    for e, loc in zip(errs, locs):
        if e.get("type") != "extra_forbidden":
            continue
        container = loc[:-1]
        if any(other[:-1] == container and err.get("type") != "extra_forbidden" for err, other in zip(errs, locs)):
            continue  # that object failed on its own fields too: a union branch the value is not
        path = _body_path(body, loc)
        if path and path not in out:
            out.append(path)
    return out


def _body_path(body, loc) -> str | None:
    """Dotted path of `loc` inside the request body, skipping parts that are not in it (FastAPI's
    "body" prefix, pydantic's union tags); falls back to _param_path when there is no body."""
    if not isinstance(body, (dict, list)):
        return _param_path([str(p) for p in loc if p not in _LOCATIONS])
    out, node = "", body
    for part in loc:
        if isinstance(node, dict) and part in node:
            out += ("." if out else "") + str(part)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out += f"[{part}]"
            node = node[part]
    return out or None


def _unrecognized(params: list[str]) -> JSONResponse:
    return JSONResponse(status_code=400, content=errors.unrecognized_arguments(params).to_dict())


def _most_specific(errs: list[dict]) -> dict:
    """The error to report. For a value that matched no branch of a union such as "auto" | int in
    [1, 64], pydantic lists "Input should be 'auto'" first; the number branch's error ("less than or
    equal to 64") is the one that names the limit, so it wins."""
    if not errs:
        return {}
    first = errs[0]
    if first.get("type") == "literal_error":
        where = _param_path([str(p) for p in first.get("loc", ())])
        for other in errs[1:]:
            if other.get("type") != "literal_error" and _param_path([str(p) for p in other.get("loc", ())]) == where:
                return other
    return first


def _param_path(loc: list[str]) -> str | None:
    """["method", "supervised", "hyperparameters", "n_epochs"] -> "method.supervised.hyperparameters.n_epochs";
    list indices become [i]; pydantic's union branch tags (e.g. "int", "literal['auto']") are dropped."""
    out = ""
    for part in loc:
        if part.isdigit():
            out += f"[{part}]"
        elif "[" in part or "'" in part or part in ("int", "float", "str", "bool") or part.startswith("constrained-"):
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
