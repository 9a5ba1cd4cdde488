"""Check response objects against OpenAI's own schemas (../shared/spec/openai-api-subset.json).

    from tests.spec_check import assert_matches
    assert_matches(job_json, "FineTuningJob")

The spec mixes OpenAPI 3.1 with 3.0-style `nullable: true`; both are honoured. References
resolve inside the spec's components. Documented ModelMill extensions (EXTENSIONS, NULLABLE below)
are merged into a copy of the spec; nothing else is relaxed.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(os.environ.get("MODELMILL_OPENAI_SPEC", "/work/shared/spec/openai-api-subset.json"))
if not SPEC_PATH.exists():  # the spec also lives next to the repo in some checkouts
    SPEC_PATH = Path(__file__).resolve().parents[2] / "shared" / "spec" / "openai-api-subset.json"

# ModelMill's documented additions to OpenAI's enums.
EXTENSIONS = {
    # A paused job (POST /fine_tuning/jobs/{id}/pause) reports status "paused" until resumed.
    ("FineTuningJob", "status"): ["paused"],
    # OpenAI's own spec accepts purpose "evals" on upload (CreateFileRequest) but leaves it out of the
    # file object's enum; the file object echoes the purpose it was uploaded with, as OpenAI's API does.
    ("OpenAIFile", "purpose"): ["evals"],
}
# Fields OpenAI returns as null when there is nothing to report (its own examples show
# `"error": null`) though its schema types them as objects: (schema, property path).
NULLABLE = [("EvalRun", ("error",)), ("EvalRunOutputItem", ("sample", "error"))]
# A batch's errors, file ids and stamps are null until they happen, as in OpenAI's own Batch examples.
NULLABLE += [("Batch", (name,)) for name in ("errors", "output_file_id", "error_file_id", "in_progress_at",
                                              "expires_at", "finalizing_at", "completed_at", "failed_at",
                                              "expired_at", "cancelling_at", "cancelled_at")]
# The spec types a multi grader's `graders` as ONE grader, but OpenAI's RFT guide and API take a map of
# name -> grader (the names are calculate_output's variables). ModelMill accepts both and echoes what it
# was given, so a map of the spec's own grader shapes is allowed too: (schema, property).
MAP_OF_SELF = [("GraderMulti", "graders")]
# GET /chat/completions/{id}/messages lists the stored *request's* messages; OpenAI's API (and its own
# example there) returns them with their roles ("user", "system"...), but the spec reuses the response
# message, whose role is only "assistant". The list's items get the request roles too.
STORED_MESSAGE_ROLES = ["system", "developer", "user", "tool", "function"]


def _nullable_to_31(node):
    """Rewrite OpenAPI 3.0 `nullable: true` into JSON Schema (a null alternative)."""
    if isinstance(node, list):
        return [_nullable_to_31(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_to_31(v) for k, v in node.items()}
    if node.pop("nullable", False):
        node = {"anyOf": [node, {"type": "null"}]}
    return node


@functools.lru_cache(maxsize=1)
def _spec() -> dict:
    spec = json.loads(SPEC_PATH.read_text())
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    for (name, prop), extra in EXTENSIONS.items():
        schemas[name]["properties"][prop]["enum"] += extra
    for name, path in NULLABLE:
        node = schemas[name]
        for prop in path[:-1]:
            node = node["properties"][prop]
        node["properties"][path[-1]] = {"anyOf": [node["properties"][path[-1]], {"type": "null"}]}
    for name, prop in MAP_OF_SELF:
        one = schemas[name]["properties"][prop]
        schemas[name]["properties"][prop] = {"anyOf": [one, {"type": "object", "minProperties": 1,
                                                             "additionalProperties": one}]}
    items = schemas["ChatCompletionMessageList"]["properties"]["data"]["items"]
    message = copy.deepcopy(schemas["ChatCompletionResponseMessage"])
    message["properties"]["role"]["enum"] = message["properties"]["role"]["enum"] + STORED_MESSAGE_ROLES
    items["allOf"][0] = message
    spec["components"] = _nullable_to_31(spec["components"])
    return spec


@functools.lru_cache(maxsize=None)
def _validator(schema_name: str) -> jsonschema.protocols.Validator:
    spec = _spec()
    if schema_name not in spec["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in {SPEC_PATH.name}")
    registry = Registry().with_resource("urn:openai-spec", Resource(contents=spec, specification=DRAFT202012))
    schema = {"$ref": f"urn:openai-spec#/components/schemas/{schema_name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def errors_for(obj, schema_name: str) -> list[str]:
    """Every schema violation, as 'path: message' strings (empty when obj matches)."""
    found = sorted(_validator(schema_name).iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found]


def assert_matches(obj, schema_name: str) -> None:
    problems = errors_for(obj, schema_name)
    assert not problems, f"{schema_name} mismatch:\n  " + "\n  ".join(problems) + f"\nobject: {json.dumps(obj)[:2000]}"


validate = assert_matches  # the name some callers expect

# Each streamed Responses API event type -> OpenAI's schema for it.
RESPONSE_EVENT_SCHEMAS = {
    "response.created": "ResponseCreatedEvent", "response.in_progress": "ResponseInProgressEvent",
    "response.output_item.added": "ResponseOutputItemAddedEvent",
    "response.content_part.added": "ResponseContentPartAddedEvent",
    "response.output_text.delta": "ResponseTextDeltaEvent", "response.output_text.done": "ResponseTextDoneEvent",
    "response.content_part.done": "ResponseContentPartDoneEvent",
    "response.output_item.done": "ResponseOutputItemDoneEvent",
    "response.function_call_arguments.delta": "ResponseFunctionCallArgumentsDeltaEvent",
    "response.function_call_arguments.done": "ResponseFunctionCallArgumentsDoneEvent",
    "response.completed": "ResponseCompletedEvent", "response.incomplete": "ResponseIncompleteEvent",
    "response.failed": "ResponseFailedEvent", "error": "ResponseErrorEvent",
}
