"""API keys never appear in logs, job events or error messages.

A short flow with two projects' keys: uploads, a job that fails on a bad file (error events), a
bad key, a missing key, another project's ids, bad bodies, a dashboard login with a wrong key and
with a right one. Everything logged (every logger, DEBUG and up), every event and every response
body is collected, and no key (nor the secret part of one) may appear in any of it, the dashboard's
Set-Cookie header included (it carries a login token standing for the key, never the key).
"""

from __future__ import annotations

import logging

from modelmill.service.core.auth import SESSION_COOKIE
from modelmill.service.worker.loop import Worker
from tests.service.conftest import chat_line
from tests.service.tenancy_world import bearer, cookie, upload_as


def test_keys_never_reach_logs_events_or_error_bodies(client, store, settings, caplog):
    caplog.set_level(logging.DEBUG)
    keys = {name: store.keys.create(f"{name} key", store.projects.ensure(name).id)[1] for name in ("alpha", "beta")}
    responses = []

    def call(method, url, key=None, **kw):
        headers = {**kw.pop("headers", {}), **(bearer(key) if key else {})}
        r = client.request(method, url, headers=headers, **kw)
        responses.append(r)
        return r

    good = upload_as(client, keys["alpha"])
    bad_lines = "\n".join([chat_line(i) for i in range(11)] + ['{"messages": [{"role": "bot", "content": "x"}]}'])
    bad = upload_as(client, keys["alpha"], bad_lines.encode())
    job = call("POST", "/v1/fine_tuning/jobs", keys["alpha"], json={"model": "modelmill-tiny",
                                                                  "training_file": bad["id"]}).json()
    Worker(settings, store).run_once()  # fails on line 12: error events
    assert call("GET", f"/v1/fine_tuning/jobs/{job['id']}", keys["alpha"]).json()["status"] == "failed"
    call("GET", f"/v1/fine_tuning/jobs/{job['id']}/events", keys["alpha"], params={"limit": 100})

    assert call("GET", "/v1/files", keys["alpha"] + "x").status_code == 401  # a near miss
    assert call("GET", "/v1/files", "sk-" + keys["beta"][3:][::-1]).status_code == 401
    assert call("GET", "/v1/files").status_code == 401
    assert call("GET", "/v1/files", headers={"Authorization": keys["alpha"]}).status_code == 401  # no "Bearer"
    assert call("GET", f"/v1/files/{good['id']}", keys["beta"]).status_code == 404
    assert call("POST", "/v1/fine_tuning/jobs", keys["beta"], json={"model": "modelmill-tiny",
                                                                   "training_file": good["id"]}).status_code == 400
    assert call("POST", "/v1/fine_tuning/jobs", keys["alpha"], json={"model": "nope", "training_file": good["id"],
                                                                    "seed": "x"}).status_code == 400
    no_model = call("POST", "/v1/chat/completions", keys["alpha"], json={"model": "nope", "messages": []})
    assert no_model.status_code in (400, 404)
    same_site = {"Origin": "http://testserver"}
    assert call("POST", "/login", data={"api_key": keys["alpha"][:-2], "next": "/"}, headers=same_site,
                follow_redirects=False).status_code == 401
    signed_in = call("POST", "/login", data={"api_key": keys["beta"], "next": "/"}, headers=same_site,
                     follow_redirects=False)
    assert signed_in.status_code == 303 and signed_in.cookies.get(SESSION_COOKIE)
    client.cookies.clear()
    assert call("GET", f"/jobs/{job['id']}", headers=cookie(client, keys["beta"])).status_code == 404
    assert call("GET", "/dashboard/api/jobs", headers={"Cookie": f"{SESSION_COOKIE}={keys['alpha']}"}).status_code == 401
    client.cookies.clear()

    events = [e.message + repr(e.data) for j in store.jobs.list(limit=100).items for e in store.events.all_for(j.id)]
    assert any("line 12" in e for e in events), "the flow produced the error events it meant to"
    assert any(r.status_code == 401 for r in responses) and any(r.status_code == 404 for r in responses)
    assert caplog.records, "the flow logged"
    bodies = [r.text for r in responses] + [str(dict(r.headers)) for r in responses]  # Set-Cookie included
    haystacks = {"logs": caplog.text, "events": "\n".join(events), "responses": "\n".join(bodies)}
    for name, key in keys.items():
        secret = key[len("sk-"):]
        for where, text in haystacks.items():
            assert key not in text, f"{name}'s key appears in the {where}"
            assert secret[:16] not in text and secret[-16:] not in text, f"part of {name}'s key is in the {where}"
