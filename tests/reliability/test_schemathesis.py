"""Schema-driven fuzzing of the service's own OpenAPI document (/openapi.json) with schemathesis:
every operation gets generated requests, valid and invalid (bodies, query and path parameters,
other HTTP methods), against an in-process app (ASGI, no worker, so no job trains). Every response
must be no 5xx, have a documented status and content type, match its documented schema (4XX/5XX:
OpenAI's ErrorResponse, see service/api/errors.py), and a 2xx body must also match the response
schema OpenAI's own spec gives that operation (../shared/spec, via tests/spec_check). Half of the
calls with a path id use a real object's id (a file, a job, an eval, a run), so the fuzzing reaches
past "not found".

The app is built when this module is imported (in a temporary MODELMILL_HOME, removed at exit):
schemathesis reads the schema at collection time, and its lazy `from_fixture` loader does not
work with pytest 9 (it reads a private `_nodeid` attribute that pytest 9 removed)."""

from __future__ import annotations

import atexit
import itertools
from collections import Counter
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from modelmill.settings import Settings
from modelmill.service.api.app import create_app
from modelmill.service.store import open_store
from tests.spec_check import SPEC_PATH, assert_matches

# Examples per operation: 6 in `make test` (~40 operations, well under a minute, derandomized so
# it repeats); `make reliability` sets MODELMILL_FUZZ_EXAMPLES for a longer, random run.
MAX_EXAMPLES = int(os.environ.get("MODELMILL_FUZZ_EXAMPLES", "6"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
CHAT_LINE = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
EVAL = {"name": "fuzz", "data_source_config": {"type": "custom", "item_schema": {
            "type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}},
        "testing_criteria": [{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
                              "reference": "{{item.label}}", "operation": "eq"}]}


def spec_response_schemas() -> dict[tuple[str, str], str]:
    """(METHOD, path with "{}" for parameters) -> the name of OpenAI's 200 response schema."""
    spec = json.loads(SPEC_PATH.read_text())
    out = {}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ref = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {}) \
                .get("schema", {}).get("$ref", "")
            if ref:
                out[(method.upper(), re.sub(r"\{[^}]+\}", "{}", "/v1" + path))] = ref.rsplit("/", 1)[-1]
    return out


SPEC_RESPONSES = spec_response_schemas()


def _app():
    home = Path(tempfile.mkdtemp(prefix="modelmill-fuzz-"))
    store = open_store(Settings(home=home, max_upload_bytes=1 << 20).ensure_dirs())
    atexit.register(shutil.rmtree, home, True)
    atexit.register(store.close)
    return create_app(Settings(home=home, max_upload_bytes=1 << 20), store=store)


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
_calls = itertools.count()
STATUSES: Counter = Counter()  # (status code) -> responses, for the figures (MODELMILL_FUZZ_STATS)


@pytest.fixture(scope="module", autouse=True)
def fuzz_stats():
    """With MODELMILL_FUZZ_STATS=PATH, write how many requests got which status (`make reliability`)."""
    yield
    if path := os.environ.get("MODELMILL_FUZZ_STATS"):
        Path(path).write_text(json.dumps({"operations": len(list(schema.get_all_operations())),
                                          "max_examples": MAX_EXAMPLES, "requests": sum(STATUSES.values()),
                                          "statuses": dict(sorted(STATUSES.items()))}, indent=1))


@pytest.fixture(scope="module")
def world():
    """One object of each kind in APP: {path parameter name: a real id}."""
    with TestClient(APP) as http:
        data = ("\n".join(json.dumps(CHAT_LINE) for _ in range(12)) + "\n").encode()
        file_id = http.post("/v1/files", files={"file": ("t.jsonl", data)}, data={"purpose": "fine-tune"}).json()["id"]
        job = {"model": "modelmill-tiny", "training_file": file_id}
        job_id = http.post("/v1/fine_tuning/jobs", json=job).json()["id"]
        eval_id = http.post("/v1/evals", json=EVAL).json()["id"]
        source = {"type": "file_content", "content": [{"item": {"label": "a"}, "sample": {"output_text": "a"}}]}
        run_id = http.post(f"/v1/evals/{eval_id}/runs",
                           json={"data_source": {"type": "jsonl", "source": source}}).json()["id"]
        upload_id = http.post("/v1/uploads", json={"filename": "u.jsonl", "purpose": "fine-tune", "bytes": 64,
                                                    "mime_type": "text/jsonl"}).json()["id"]
        endpoint_id = http.post("/v1/webhook_endpoints", json={"url": "http://8.8.8.8/hook"}).json()["id"]
    return {"file_id": file_id, "job_id": job_id, "eval_id": eval_id, "run_id": run_id, "model": "modelmill-tiny",
            "upload_id": upload_id, "endpoint_id": endpoint_id}


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          derandomize="MODELMILL_FUZZ_EXAMPLES" not in os.environ, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_every_response_matches_its_schema(case, world):
    ids = world
    if case.path_parameters and next(_calls) % 2:
        for name in case.path_parameters:
            if name in ids:
                case.path_parameters[name] = ids[name]
    response = case.call()
    STATUSES[response.status_code] += 1
    case.validate_response(response, checks=CHECKS)
    name = SPEC_RESPONSES.get((case.method.upper(), re.sub(r"\{[^}]+\}", "{}", case.path)))
    if 200 <= response.status_code < 300 and name:
        assert_matches(response.json(), name)


def test_openapi_documents_what_the_service_sends():
    """No FastAPI 422 (never sent); every operation's 4XX / 5XX is OpenAI's ErrorResponse; the
    hand-parsed upload body and the binary file content are described."""
    doc = TestClient(APP).get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(doc)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "422" not in op["responses"], (method, path)
            for status in ("4XX", "5XX"):
                ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/ErrorResponse", (method, path)
    upload = doc["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["required"] == ["file", "purpose"] and "fine-tune" in upload["properties"]["purpose"]["enum"]
    content = doc["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["application/octet-stream"]
