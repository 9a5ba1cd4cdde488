"""Unknown query parameters get OpenAI's answer to unknown request fields: a 400
`Unrecognized request argument supplied: <name>`, with `param` naming it.

Ignoring them answered another question than the one asked: `GET /v1/files?limt=5` or
`?ordr=desc` listed the default page, and a filter sent under a name ModelMill does not know
(`GET /v1/fine_tuning/jobs?status=failed`) listed every job. Body fields are refused by the wire
models (service/api/errors.py); this is the same rule for the query string, in one place: a router
dependency on every /v1 route (api/app.py) compares the request's parameters with those the matched
route declares, its sub-dependencies' included, so a new route is covered without listing its
parameters twice.

Routes that read `name[key]=value` parameters themselves (how the openai SDK sends a dict, e.g. a
`metadata` filter) say so with `@query_maps("metadata")`. The SDK sends a list as `name[]=a&name[]=b`:
a route that takes one declares the alias `name[]` (see routes/responses.py).
"""

from __future__ import annotations

from fastapi import Request

from modelmill import errors


def query_maps(*names: str):
    """Route decorator (put it under the @router.get line): the route reads `name[key]=value` query
    parameters itself, so `name[...]` (and a bare `name`, which the route must answer) pass."""
    def mark(endpoint):
        endpoint.query_maps = names
        return endpoint
    return mark


async def refuse_unknown(request: Request) -> None:
    """The router dependency: 400 naming the first query parameter the matched route does not take.
    Async (no I/O here) so that FastAPI runs it on the event loop, not as a thread-pool round trip
    on every /v1 request (api/deps.py says why that matters)."""
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    declared, maps = _declared(route)
    unknown = [name for name in dict.fromkeys(request.query_params.keys())
               if name not in declared and not any(name == m or name.startswith(m + "[") and name.endswith("]")
                                                   for m in maps)]
    if unknown:
        raise errors.unrecognized_arguments(unknown)


def _declared(route) -> tuple[set[str], tuple[str, ...]]:
    """(query parameter names the route and its dependencies declare, its query_maps names). Walked
    on each request that has a query string: a few dozen fields at most, cheaper than keeping a cache
    right (routes are not hashable, and tests make many apps)."""
    names, stack = set(), [route.dependant]
    while stack:
        dependant = stack.pop()
        names.update(field.alias for field in dependant.query_params)
        stack.extend(dependant.dependencies)
    return names, getattr(route.endpoint, "query_maps", ())
