"""Unknown query parameters on /v1 routes are OpenAI's 400 `Unrecognized request argument supplied`
(service/api/query_params.py); the parameters each route declares, `metadata[key]` filters and the
SDK's `include[]` list spelling still pass."""

from __future__ import annotations

import pytest

from tests.spec_check import assert_matches


def refused(r, *names: str) -> None:
    plural = "s" if len(names) > 1 else ""
    assert r.status_code == 400, r.text
    assert r.json() == {"error": {"message": f"Unrecognized request argument{plural} supplied: {', '.join(names)}",
                                  "type": "invalid_request_error", "param": names[0], "code": None}}
    assert_matches(r.json(), "ErrorResponse")


@pytest.mark.parametrize("method, path", [
    ("get", "/v1/files?limt=5"),
    ("get", "/v1/models?limt=5"),
    ("get", "/v1/fine_tuning/jobs?limt=5"),
    ("get", "/v1/fine_tuning/jobs/ftjob-missing?limt=5"),  # refused before the 404
    ("get", "/v1/chat/completions?limt=5"),
    ("get", "/v1/evals?limt=5"),
    ("post", "/v1/chat/completions?limt=5"),
])
def test_an_unknown_query_parameter_is_a_400_naming_it(client, method, path):
    kwargs = {"json": {}} if method == "post" else {}
    refused(getattr(client, method)(path, **kwargs), "limt")


def test_several_are_named_in_order(client):
    refused(client.get("/v1/files?ordr=desc&limit=2&x=1&ordr=asc"), "ordr", "x")


@pytest.mark.parametrize("path", [
    "/v1/files?limit=2&order=desc&purpose=fine-tune",
    "/v1/fine_tuning/jobs?limit=2&metadata[team]=a&metadata[run]=b",
    "/v1/chat/completions?limit=2&order=desc&model=modelmill-tiny&metadata[k]=v",
    "/v1/evals?limit=2&order=desc&order_by=created_at",
    "/v1/models",
])
def test_declared_parameters_and_metadata_filters_pass(client, path):
    r = client.get(path)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path, param", [
    ("/v1/fine_tuning/jobs?metadata=null", "metadata"),  # OpenAI's "jobs without metadata": not served
    ("/v1/fine_tuning/jobs?metadata[team=a", "metadata[team"),  # not a metadata[key]
    ("/v1/chat/completions?metadata=x", "metadata"),
])
def test_malformed_metadata_filters_are_400(client, path, param):
    r = client.get(path)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("path", [
    "/v1/responses/resp_missing?include[]=message.output_text.logprobs&include[]=x",  # the SDK's list spelling
    "/v1/responses/resp_missing?include=x&stream=false&starting_after=3&include_obfuscation=false",
    "/v1/responses/resp_missing/input_items?include[]=x&include=y&after=a&limit=3&order=asc",
])
def test_openais_responses_read_parameters_reach_the_route(client, path):
    """Known to the route (which refuses the ones it does not serve, service/responses/requests.py): a
    missing response is then a 404, not an unknown-parameter 400."""
    assert client.get(path).status_code == 404
