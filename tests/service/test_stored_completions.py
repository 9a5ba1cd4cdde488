"""Stored chat completions over HTTP on modelmill-tiny: `store: true` (plain and streamed) keeps the
request and completion; list (model and metadata filters, cursors), read, messages, update, delete;
everything in OpenAI's shapes."""

from __future__ import annotations

from tests.spec_check import assert_matches

BODY = {"model": "modelmill-tiny", "max_tokens": 3, "temperature": 0,
        "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}]}


def ok(r, status: int = 200) -> dict:
    assert r.status_code == status, r.text
    return r.json()


def test_store_list_read_messages_update_delete(client):
    kept = [ok(client.post("/v1/chat/completions", json={**BODY, "store": True, "metadata": {"v": str(i % 2)}}))
            for i in range(3)]
    ok(client.post("/v1/chat/completions", json=BODY))  # not stored
    streamed = client.post("/v1/chat/completions", json={**BODY, "store": True, "stream": True,
                                                         "metadata": {"v": "s"}})
    assert streamed.status_code == 200

    listing = ok(client.get("/v1/chat/completions"))
    assert_matches(listing, "ChatCompletionList")
    assert [c["id"] for c in listing["data"][:3]] == [c["id"] for c in kept] and len(listing["data"]) == 4
    for c in listing["data"]:
        assert_matches(c, "CreateChatCompletionResponse")
    stream_row = listing["data"][3]
    assert stream_row["metadata"] == {"v": "s"} and stream_row["choices"][0]["finish_reason"] in ("stop", "length")
    assert stream_row["usage"]["completion_tokens"] >= 1

    odd = ok(client.get("/v1/chat/completions", params={"metadata[v]": "1"}))
    assert [c["id"] for c in odd["data"]] == [kept[1]["id"]]
    assert ok(client.get("/v1/chat/completions", params={"model": "other"}))["data"] == []
    page = ok(client.get("/v1/chat/completions", params={"limit": 2, "order": "desc"}))
    assert page["has_more"] and page["last_id"] == kept[2]["id"]
    rest = ok(client.get("/v1/chat/completions", params={"after": page["last_id"], "order": "desc"}))
    assert [c["id"] for c in rest["data"]] == [kept[1]["id"], kept[0]["id"]] and not rest["has_more"]

    one = ok(client.get(f"/v1/chat/completions/{kept[0]['id']}"))
    assert_matches(one, "CreateChatCompletionResponse")
    assert one["choices"] == kept[0]["choices"] and one["metadata"] == {"v": "0"}
    messages = ok(client.get(f"/v1/chat/completions/{kept[0]['id']}/messages"))
    assert_matches(messages, "ChatCompletionMessageList")
    assert [(m["id"], m["role"], m["content"]) for m in messages["data"]] == [
        (f"{kept[0]['id']}-0", "system", "Be terse."), (f"{kept[0]['id']}-1", "user", "hi")]

    updated = ok(client.post(f"/v1/chat/completions/{kept[0]['id']}", json={"metadata": {"v": "9"}}))
    assert updated["metadata"] == {"v": "9"}
    assert [c["id"] for c in ok(client.get("/v1/chat/completions", params={"metadata[v]": "9"}))["data"]] == \
        [kept[0]["id"]]
    deleted = ok(client.delete(f"/v1/chat/completions/{kept[0]['id']}"))
    assert_matches(deleted, "ChatCompletionDeleted")
    assert client.get(f"/v1/chat/completions/{kept[0]['id']}").status_code == 404


def test_bad_stored_completion_requests(client):
    r = client.get("/v1/chat/completions/chatcmpl-nope")
    assert r.status_code == 404 and r.json()["error"]["param"] == "completion_id"
    assert_matches(r.json(), "ErrorResponse")
    kept = ok(client.post("/v1/chat/completions", json={**BODY, "store": True}))
    for body, param in (({}, "metadata"), ({"metadata": {"k": 1}}, "metadata"),
                        ({"metadata": {}, "colour": 1}, "colour")):
        r = client.post(f"/v1/chat/completions/{kept['id']}", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = client.get("/v1/chat/completions", params={"after": "chatcmpl-nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "after"
