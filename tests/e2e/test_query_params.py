"""Query parameters through the official openai SDK against a live server: the SDK's own list
calls (after / limit / order, `metadata[key]` filters, `include[]`) pass; a parameter ModelMill does
not know (the SDK's `extra_query`) is OpenAI's 400 `Unrecognized request argument supplied`
(service/api/query_params.py)."""

from __future__ import annotations

import openai
import pytest

from tests.spec_check import assert_matches


def test_the_sdks_list_calls_pass(client, train_file):
    files = client.files.list(purpose="fine-tune", limit=2, order="desc")
    assert train_file.id in [f.id for f in client.files.list(purpose="fine-tune", limit=100, order="asc")]
    if files.has_more:  # the auto-pager sends `after`
        assert client.files.list(purpose="fine-tune", limit=2, order="desc", after=files.data[-1].id).data
    assert client.fine_tuning.jobs.list(limit=3, metadata={"suite": "e2e-query"}).data == []
    assert client.chat.completions.list(limit=3, order="desc", metadata={"suite": "e2e-query"}).data == []
    assert isinstance(client.evals.list(limit=2, order="asc", order_by="updated_at").data, list)
    assert client.models.list().data


def test_an_unknown_query_parameter_is_refused_by_name(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.files.list(limit=2, extra_query={"limt": 5})
    assert e.value.status_code == 400 and e.value.body["param"] == "limt"
    assert e.value.body["message"] == "Unrecognized request argument supplied: limt"
    assert_matches({"error": e.value.body}, "ErrorResponse")


def test_responses_include_is_read_in_the_sdks_spelling(client):
    """The SDK sends `include=[...]` as `include[]=...`: it reaches the route, which refuses it by name."""
    made = client.responses.create(model="modelmill-tiny", input="hi", max_output_tokens=2, temperature=0)
    for call in (lambda: client.responses.retrieve(made.id, include=["message.output_text.logprobs"]),
                 lambda: client.responses.input_items.list(made.id, include=["message.output_text.logprobs"])):
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.body["param"] == "include" and e.value.body["code"] == "unsupported_parameter"
    assert [i.role for i in client.responses.input_items.list(made.id, limit=5, order="asc").data] == ["user"]
