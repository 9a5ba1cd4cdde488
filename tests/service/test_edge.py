"""The edge (service/api/edge.py) through the whole app: CSRF on cookie sessions and /login, login
tokens (not keys) in the cookie, key revocation at once (store, dashboard, CLI), body caps counted
while streaming, text hygiene (NUL, lone surrogates, nesting) as 400s naming the field, the chat
text-size limit, and /docs without a CDN. tests/service/test_edge_live.py covers what needs a real
socket (answers before the body is read, interrupted uploads)."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from modelmill import cli
from modelmill.service.api.app import create_app
from modelmill.service.api.text_hygiene import MAX_JSON_DEPTH
from modelmill.service.core.auth import SESSION_COOKIE
from tests.service.conftest import training_jsonl
from tests.service.tenancy_world import bearer
from tests.spec_check import assert_matches

SAME = {"Origin": "http://testserver"}
EVIL = {"Origin": "http://evil.example"}
OTHER_PORT = {"Origin": "http://testserver:8001"}
CROSS_SITE = {"Sec-Fetch-Site": "cross-site"}
SAME_SITE = {"Sec-Fetch-Site": "same-site"}  # e.g. another port of the same host


def sign_in(client, key: str) -> str:
    r = client.post("/login", data={"api_key": key, "next": "/"}, headers=SAME, follow_redirects=False)
    assert r.status_code == 303, r.text
    token = r.cookies[SESSION_COOKIE]
    client.cookies.clear()
    return token


def with_cookie(token: str, extra: dict | None = None) -> dict:
    return {"Cookie": f"{SESSION_COOKIE}={token}", **(extra or {})}


def assert_error(r, status: int, code: str | None = None, param: str | None = "-"):
    assert r.status_code == status, r.text
    assert_matches(r.json(), "ErrorResponse")
    if code is not None:
        assert r.json()["error"]["code"] == code, r.text
    if param != "-":
        assert r.json()["error"]["param"] == param, r.text


@pytest.fixture
def key(store):
    return store.keys.create("edge", store.projects.ensure("edge").id)[1]


# -- CSRF -------------------------------------------------------------------------------

def test_a_cookie_session_needs_same_origin_proof_for_unsafe_methods(client, key):
    token = sign_in(client, key)
    upload = {"files": {"file": ("t.jsonl", training_jsonl(12))}, "data": {"purpose": "fine-tune"}}
    for bad in (EVIL, OTHER_PORT, CROSS_SITE, SAME_SITE, {}, {**SAME, **CROSS_SITE}):
        assert_error(client.post("/v1/files", headers=with_cookie(token, bad), **upload), 403, "csrf_failed")
    assert client.get("/v1/files").status_code == 401  # nothing was stored in the client's jar
    assert client.get("/v1/files", headers=with_cookie(token)).json()["data"] == []  # and nothing uploaded
    assert_error(client.post("/v1/files", headers=with_cookie(token, {"Origin": "null"}), **upload), 403)
    for good in (SAME, {"Sec-Fetch-Site": "same-origin"}, {**SAME, "Sec-Fetch-Site": "same-origin"},
                 {"Origin": "null", "Sec-Fetch-Site": "same-origin"}):  # a form POST under no-referrer
        assert client.post("/v1/files", headers=with_cookie(token, good), **upload).status_code == 200
    # GETs need no proof (they change nothing); a bearer key is never asked for one.
    assert client.get("/v1/files", headers=with_cookie(token, EVIL)).status_code == 200
    assert client.post("/v1/files", headers={**bearer(key), **EVIL, **CROSS_SITE}, **upload).status_code == 200


def test_login_needs_same_origin_proof_too(client, key):
    for bad in (EVIL, CROSS_SITE, {}):
        r = client.post("/login", data={"api_key": key, "next": "/"}, headers=bad, follow_redirects=False)
        assert_error(r, 403, "csrf_failed")
        assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert client.post("/logout", headers=EVIL, follow_redirects=False).status_code == 403


def test_a_keyless_loopback_server_refuses_other_sites_pages(client):
    body = {"files": {"file": ("t.jsonl", training_jsonl(12))}, "data": {"purpose": "fine-tune"}}
    assert_error(client.post("/v1/files", headers=CROSS_SITE, **body), 403, "csrf_failed")
    assert_error(client.post("/v1/files", headers=EVIL, **body), 403, "csrf_failed")
    assert client.post("/v1/files", **body).status_code == 200  # an SDK: no browser headers at all
    assert client.post("/v1/files", headers=SAME, **body).status_code == 200


# -- login token ------------------------------------------------------------------------

def test_the_cookie_holds_a_login_token_that_dies_with_logout_idleness_and_revocation(client, store, settings, key):
    token = sign_in(client, key)
    assert token != key and key not in token
    assert client.get("/v1/models", headers=with_cookie(token)).status_code == 200
    assert client.get("/v1/models", headers=with_cookie(key)).status_code == 401  # a raw key is no session
    client.post("/logout", headers=with_cookie(token, SAME), follow_redirects=False)
    assert client.get("/v1/models", headers=with_cookie(token)).status_code == 401  # ended server-side

    token = sign_in(client, key)
    store.db.execute("UPDATE login_sessions SET last_used_at = ?", (time.time() - settings.login_idle_seconds - 1,))
    assert_error(client.get("/v1/models", headers=with_cookie(token)), 401, "invalid_session")

    token = sign_in(client, key)
    key_id = [k.id for k in store.keys.list() if k.name == "edge"][0]
    store.keys.create("spare", store.projects.ensure("other").id)  # else no key is left: keyless loopback
    store.keys.revoke(key_id)
    assert client.get("/v1/models", headers=with_cookie(token)).status_code == 401
    assert client.get("/v1/models", headers=bearer(key)).status_code == 401
    assert store.db.one("SELECT COUNT(*) AS n FROM login_sessions WHERE key_id = ?", (key_id,))["n"] == 0


def test_the_dashboard_revokes_its_projects_own_keys_at_once(client, store, key):
    other = store.keys.create("spare", store.projects.ensure("edge").id)
    foreign = store.keys.create("theirs", store.projects.ensure("elsewhere").id)
    token = sign_in(client, key)
    page = client.get("/keys", headers=with_cookie(token))
    assert page.status_code == 200 and other[0].id in page.text and foreign[0].id not in page.text
    assert 'action="/keys/' in page.text and "(signs you out)" in page.text

    r = client.post(f"/keys/{other[0].id}/revoke", headers=with_cookie(token, EVIL), follow_redirects=False)
    assert r.status_code == 403  # a forged form
    r = client.post(f"/keys/{foreign[0].id}/revoke", headers=with_cookie(token, SAME), follow_redirects=False)
    assert r.status_code == 404  # another project's key: as if missing
    assert client.get("/v1/models", headers=bearer(foreign[1])).status_code == 200
    r = client.post(f"/keys/{other[0].id}/revoke", headers=with_cookie(token, SAME), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/keys"
    assert client.get("/v1/models", headers=bearer(other[1])).status_code == 401

    own_id = [k.id for k in store.keys.list() if k.name == "edge"][0]
    r = client.post(f"/keys/{own_id}/revoke", headers=with_cookie(token, SAME), follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/v1/models", headers=with_cookie(token)).status_code == 401


def test_cli_keys_list_and_revoke(settings, store, capsys, monkeypatch):
    monkeypatch.setenv("MODELMILL_HOME", str(settings.home))
    if settings.database_url:  # the Postgres run of this suite
        monkeypatch.setenv("MODELMILL_DATABASE_URL", settings.database_url)
    record, plaintext = store.keys.create("ci", store.projects.ensure("team").id)
    assert cli.main(["keys", "list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["id"] == record.id and row["project"] == "team" and row["prefix"] == plaintext[:8]
    assert plaintext[8:] not in json.dumps(row)
    assert cli.main(["keys", "list"]) == 0 and record.id in capsys.readouterr().out
    assert cli.main(["keys", "revoke", "key_nope"]) == 1 and "No such API key" in capsys.readouterr().err
    assert cli.main(["keys", "revoke", record.id]) == 0
    assert store.keys.verify(plaintext) is None and store.keys.list() == []


# -- body caps --------------------------------------------------------------------------

def test_bodies_past_their_cap_are_413_counted_while_streaming(settings, store, key):
    small = settings.with_(max_json_bytes=64 * 1024)
    with TestClient(create_app(small, store=store)) as c:
        big = json.dumps({"model": "modelmill-tiny", "messages": [{"role": "user", "content": "x" * 70_000}]}).encode()
        assert_error(c.post("/v1/chat/completions", content=big, headers={**bearer(key), "Content-Type":
                                                                          "application/json"}), 413, "request_too_large")
        chunks = (big[i:i + 8192] for i in range(0, len(big), 8192))  # no Content-Length: counted as it comes
        assert_error(c.post("/v1/chat/completions", content=chunks, headers={**bearer(key), "Content-Type":
                                                                             "application/json"}), 413)
        upload = (b"x" * 8192 for _ in range(40))  # 320 KB, chunked, past the 64 KB upload cap + form overhead
        r = c.post("/v1/files", content=upload, headers={**bearer(key), "Content-Type":
                                                        "multipart/form-data; boundary=b"})
        assert_error(r, 413)
        assert not list(settings.files_dir.glob(".upload-*"))
        login = (b"api_key=" + b"k" * 1024 for _ in range(32))
        assert_error(c.post("/login", content=login, headers={**SAME, "Content-Type":
                                                              "application/x-www-form-urlencoded"}), 413)


# -- text hygiene -----------------------------------------------------------------------

def test_nul_and_lone_surrogates_are_400s_naming_the_field(client, key):
    h = {**bearer(key), "Content-Type": "application/json"}
    f = client.post("/v1/files", files={"file": ("t.jsonl", training_jsonl(12))}, data={"purpose": "fine-tune"},
                    headers=bearer(key)).json()["id"]
    job = '{"model": "modelmill-tiny", "training_file": "%s", "metadata": {"a": "x\\ud800"}}' % f
    assert_error(client.post("/v1/fine_tuning/jobs", content=job, headers=h), 400, "invalid_text", "metadata.a")
    job = '{"model": "modelmill-tiny", "training_file": "%s", "metadata": {"k\\u0000": "v"}}' % f
    assert_error(client.post("/v1/fine_tuning/jobs", content=job, headers=h), 400, "invalid_text", "metadata.k\\u0000")
    ev = '{"name": "\\udc00 eval", "data_source_config": {"type": "custom", "item_schema": {}}, "testing_criteria": []}'
    assert_error(client.post("/v1/evals", content=ev, headers=h), 400, "invalid_text", "name")
    chat = '{"model": "modelmill-tiny", "messages": [{"role": "user", "content": "hi\\u0000"}]}'
    assert_error(client.post("/v1/chat/completions", content=chat, headers=h), 400, "invalid_text",
                 "messages[0].content")
    assert_error(client.get("/v1/fine_tuning/jobs?metadata[a%00]=v", headers=bearer(key)), 400, "invalid_text")
    raw = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n--b\r\n'
           b'Content-Disposition: form-data; name="file"; filename="a\x00b.jsonl"\r\n\r\n' + training_jsonl(12) +
           b'\r\n--b--\r\n')  # a raw NUL in the filename (httpx would percent-encode it)
    r = client.post("/v1/files", content=raw, headers={**bearer(key), "Content-Type": "multipart/form-data; boundary=b"})
    assert_error(r, 400, "invalid_text", "file")
    # An escaped emoji is a surrogate *pair*: fine, and stored as the one character it is.
    job = '{"model": "modelmill-tiny", "training_file": "%s", "metadata": {"a": "\\ud83d\\ude00"}}' % f
    r = client.post("/v1/fine_tuning/jobs", content=job, headers=h)
    assert r.status_code == 200 and r.json()["metadata"] == {"a": "\U0001F600"}


def test_nesting_past_the_limit_is_a_400_and_template_recursion_too(client, key):
    def chat_with_schema(levels: int):  # `levels` objects deep, written by hand: json.dumps recurses too
        deep = '{"type": "object", "properties": {"p": ' * (levels // 2) + '{"type": "string"}' + "}}" * (levels // 2)
        body = ('{"model": "modelmill-tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": '
                '"function", "function": {"name": "f", "parameters": %s}}]}' % deep)
        return client.post("/v1/chat/completions", content=body, headers={**bearer(key), "Content-Type":
                                                                         "application/json"})

    r = chat_with_schema(900)
    assert_error(r, 400, "nested_too_deeply")
    assert r.json()["error"]["param"].startswith("tools[0].function.parameters.properties.p.")
    assert str(MAX_JSON_DEPTH) in r.json()["error"]["message"]
    assert_error(chat_with_schema(5000), 400, "nested_too_deeply", None)  # past what json.loads can parse


def test_the_template_renderer_turns_recursion_into_a_400_naming_tools():
    from modelmill.errors import InvalidRequestError
    from modelmill.ml.sampling import prompts

    class Tokenizer:  # a chat template that recurses without end on these tools
        chat_template = None  # (the default ChatML family)

        def apply_chat_template(self, *a, **kw):
            raise RecursionError("maximum recursion depth exceeded")

    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    with pytest.raises(InvalidRequestError) as e:
        prompts.render(Tokenizer(), [{"role": "user", "content": "x"}], tools, None)
    assert e.value.param == "tools"


def test_a_huge_chat_message_is_refused_fast_naming_the_limit(client, settings, key):
    text = "word " * (settings.max_chat_chars // 5 + 10)
    started = time.perf_counter()
    r = client.post("/v1/chat/completions", json={"model": "modelmill-tiny", "messages": [
        {"role": "system", "content": "hi"}, {"role": "user", "content": text}]}, headers=bearer(key))
    assert_error(r, 400, "limit_exceeded", "messages[1].content")
    assert "MODELMILL_MAX_CHAT_CHARS" in r.json()["error"]["message"]
    assert time.perf_counter() - started < 5.0  # nothing was tokenised


# -- /docs ------------------------------------------------------------------------------

def test_docs_load_no_asset_from_another_host(client):
    import re

    html = client.get("/docs").text
    assets = re.findall(r'(?:src|href)=["\']([^"\']+)', html) + re.findall(r"url: ?['\"]([^'\"]+)", html)
    assert assets and all(a.startswith("/") for a in assets), assets
    for a in assets:
        if a.startswith("/dashboard/static/"):
            assert client.get(a).status_code == 200, a
    assert '"validatorUrl": null' in html
    assert client.get("/redoc").status_code == 404
