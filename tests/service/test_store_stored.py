"""Stored chat completions and stored Responses in the store (store/stored.py), on SQLite and on
Postgres (the `dialect` fixture): per-project rows, metadata / model / time filters, cursors."""

from __future__ import annotations

import pytest

from modelmill import errors
from tests.service.conftest import DIALECTS


@pytest.fixture(params=DIALECTS)
def dialect(request) -> str:
    return request.param


def completion(i: int, model: str = "modelmill-tiny") -> dict:
    return {"id": f"chatcmpl-{i}", "object": "chat.completion", "created": 1_700_000_000 + i, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": f"answer {i}", "refusal": None}}]}


def test_stored_completions_filter_page_update_delete_per_project(store):
    repo = store.stored_completions
    for i in range(5):
        repo.add("proj_a", completion(i, "m1" if i % 2 else "m2"), {"messages": [{"role": "user", "content": str(i)}]},
                 {"parity": "odd" if i % 2 else "even", "n": str(i)})
    repo.add("proj_b", completion(9), {"messages": []}, {"parity": "odd"})

    odd = repo.list(project_id="proj_a", metadata={"parity": "odd"})
    assert [r.id for r in odd.items] == ["chatcmpl-1", "chatcmpl-3"] and not odd.has_more
    m2 = repo.list(project_id="proj_a", model="m2").items
    assert [r.id for r in m2] == ["chatcmpl-0", "chatcmpl-2", "chatcmpl-4"]
    first = repo.list(project_id="proj_a", limit=2, order="desc")
    assert [r.id for r in first.items] == ["chatcmpl-4", "chatcmpl-3"] and first.has_more
    rest = repo.list(project_id="proj_a", limit=10, order="desc", after="chatcmpl-3")
    assert [r.id for r in rest.items] == ["chatcmpl-2", "chatcmpl-1", "chatcmpl-0"] and not rest.has_more
    with pytest.raises(errors.InvalidRequestError):  # another project's id is no cursor
        repo.list(project_id="proj_a", after="chatcmpl-9")

    got = repo.get("chatcmpl-1", project_id="proj_a")
    assert got.request["messages"][0]["content"] == "1"
    assert got.completion["choices"][0]["message"]["content"] == "answer 1"
    with pytest.raises(errors.NotFoundError):
        repo.get("chatcmpl-1", project_id="proj_b")
    updated = repo.update_metadata("chatcmpl-1", {"parity": "changed"}, project_id="proj_a")
    assert updated.metadata == {"parity": "changed"} and updated.completion["metadata"] == {"parity": "changed"}
    assert [r.id for r in repo.list(project_id="proj_a", metadata={"parity": "odd"}).items] == ["chatcmpl-3"]
    assert [r.id for r in repo.query(project_id="proj_a", created_after=1_700_000_003)] == ["chatcmpl-3", "chatcmpl-4"]
    assert [r.id for r in repo.query(project_id="proj_a", metadata={"parity": "even"}, limit=2)] == \
        ["chatcmpl-0", "chatcmpl-2"]

    with pytest.raises(errors.NotFoundError):
        repo.delete("chatcmpl-3", project_id="proj_b")
    repo.delete("chatcmpl-3", project_id="proj_a")
    with pytest.raises(errors.NotFoundError):
        repo.get("chatcmpl-3", project_id="proj_a")


def test_stored_responses_per_project_and_queries(store):
    repo = store.responses
    for i, (model, instructions) in enumerate([("m1", "Be brief."), ("m2", "Talk like a pirate."), ("m1", None)]):
        response = {"id": f"resp_{i}", "object": "response", "created_at": 1_700_000_000 + i, "model": model,
                    "metadata": {"i": str(i)}, "instructions": instructions, "previous_response_id": None,
                    "output": []}
        repo.add("proj_a", response, [{"id": f"msg_{i}", "type": "message"}], [{"role": "user", "content": "x"}])
    got = repo.get("resp_1", project_id="proj_a")
    assert got.input_items == [{"id": "msg_1", "type": "message"}] and got.history == [{"role": "user", "content": "x"}]
    assert got.response["model"] == "m2" and got.instructions == "Talk like a pirate."
    with pytest.raises(errors.NotFoundError) as e:
        repo.get("resp_1", project_id="proj_b", param="previous_response_id")
    assert e.value.param == "previous_response_id"
    assert [r.id for r in repo.query(project_id="proj_a", model="m1")] == ["resp_0", "resp_2"]
    assert [r.id for r in repo.query(project_id="proj_a", instructions_search="pirate")] == ["resp_1"]
    assert [r.id for r in repo.query(project_id="proj_a", metadata={"i": "2"})] == ["resp_2"]
    assert repo.query(project_id="proj_b") == []
    repo.delete("resp_0", project_id="proj_a")
    with pytest.raises(errors.NotFoundError):
        repo.get("resp_0", project_id="proj_a")
