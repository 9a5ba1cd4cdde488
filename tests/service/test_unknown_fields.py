"""The one place unknown request fields become OpenAI's 400 (service/api/errors.py): dotted paths
through nested objects, lists and unions of models, without naming a union branch's tag or the
fields of a branch the value is not."""

from __future__ import annotations

from typing import Annotated, Literal, Union

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import Field

from modelmill.service.api import errors as api_errors
from modelmill.service.schemas.common import OpenAIRequest


class A(OpenAIRequest):
    type: Literal["a"]
    x: int


class B(OpenAIRequest):
    type: Literal["b"]
    y: int


class Body(OpenAIRequest):
    plain: Union[A, B, None] = None
    tagged: Annotated[Union[A, B], Field(discriminator="type")] | None = None
    items: list[A] | None = None


@pytest.fixture(scope="module")
def client():
    app = FastAPI()
    api_errors.install(app)

    @app.post("/r")
    def route(body: Body) -> dict:
        return {}

    return TestClient(app)


@pytest.mark.parametrize("body,params", [
    ({"plain": {"type": "a", "x": 1, "z": 2}}, ["plain.z"]),
    ({"plain": {"type": "b", "y": 1, "x": 2}}, ["plain.x"]),  # x is A's field, not B's
    ({"tagged": {"type": "b", "y": 1, "q": 1}}, ["tagged.q"]),
    ({"items": [{"type": "a", "x": 1}, {"type": "a", "x": 1, "w": 0}]}, ["items[1].w"]),
    ({"zz": 1, "plain": {"type": "a", "x": 1, "z": 2}}, ["plain.z", "zz"]),
])
def test_unknown_fields_are_named_by_their_path_in_the_body(client, body, params):
    r = client.post("/r", json=body)
    plural = "s" if len(params) > 1 else ""
    assert r.status_code == 400 and r.json() == {"error": {
        "message": f"Unrecognized request argument{plural} supplied: {', '.join(params)}",
        "type": "invalid_request_error", "param": params[0], "code": None}}


def test_a_value_matching_no_branch_is_not_an_unknown_field(client):
    r = client.post("/r", json={"plain": {"type": "c"}})
    assert r.status_code == 400 and not r.json()["error"]["message"].startswith("Unrecognized")
