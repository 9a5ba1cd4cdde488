"""Webhooks (service/webhooks/outbox.py, store/webhooks.py, store/webhook_queue.py): every terminal state of a
job or eval run writes exactly one event in OpenAI's Webhook* shape, in the transaction that ends it;
deliveries reach a real HTTP receiver on 127.0.0.1, signed so the openai SDK's webhooks.unwrap verifies
them, and are retried (500s, a receiver that is down, one that hangs) until delivered or given up.
The outbox tests run on SQLite and Postgres."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.webhooks import outbox as webhooks
from modelmill.service.api.app import create_app
from modelmill.service.store import EvalRunQueue, JobQueue
from modelmill.service.store.evals import NewRun
from modelmill.service.store.webhook_queue import DeliveryQueue
from modelmill.service.store.webhooks import EVENT_TYPES
from tests.service.conftest import DIALECTS, create_job, training_jsonl, upload
from tests.service.test_queue import add_job
from tests.spec_check import assert_matches
from tools.webhook_receiver import Receiver

SCHEMAS = {"fine_tuning.job.succeeded": "WebhookFineTuningJobSucceeded",
           "fine_tuning.job.failed": "WebhookFineTuningJobFailed",
           "fine_tuning.job.cancelled": "WebhookFineTuningJobCancelled",
           "eval.run.succeeded": "WebhookEvalRunSucceeded", "eval.run.failed": "WebhookEvalRunFailed",
           "eval.run.canceled": "WebhookEvalRunCanceled"}


@pytest.fixture
def settings(settings):
    """conftest's, with receivers on loopback allowed and retries fast enough for a test."""
    return settings.with_(webhook_allow_private=True, webhook_retry_base_seconds=0.05,
                          webhook_retry_max_interval_seconds=0.2, webhook_timeout_seconds=0.5)


@pytest.fixture
def rx():
    with Receiver() as r:
        yield r


def add_endpoint(store, settings, url: str = "http://127.0.0.1:9/hook", events=None, project_id="proj_default"):
    return webhooks.create_endpoint(settings, store, project_id, url, events)


def events_by_subject(store) -> dict[str, list[str]]:
    """{job or run id: [event types, oldest first]}, each body checked against OpenAI's schema."""
    out: dict[str, list[str]] = {}
    for body in reversed(store.webhooks.events()):
        assert_matches(body, SCHEMAS[body["type"]])
        assert body["object"] == "event" and body["id"].startswith("evt_")
        out.setdefault(body["data"]["id"], []).append(body["type"])
    return out


def make_run(store) -> str:
    ev = store.evals.create("e", {"type": "custom", "item_schema": {"type": "object"}, "include_sample_schema": False},
                            [{"type": "string_check", "name": "x", "input": "a", "reference": "a", "operation": "eq"}],
                            None)
    return store.evals.create_run(NewRun(ev.id, "r", {"type": "jsonl", "source": {
        "type": "file_content", "content": [{"item": {}}]}})).id


def pump(settings, store, done, timeout: float = 15.0) -> None:
    """Run deliveries as a worker's dispatcher would, until done() (or fail after `timeout`)."""
    queue = store.webhook_queue(webhooks.lease_seconds(settings))
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=settings.webhook_timeout_seconds) as http:
        while not done():
            assert time.monotonic() < deadline, "deliveries did not finish in time"
            if webhooks.deliver_next(settings, store, queue, http, "test-worker") is None:
                time.sleep(0.02)


def only_delivery(store):
    [d] = store.webhooks.deliveries()
    return d


# -- the outbox: one event per terminal transition, in its transaction -------------------------------

@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_route_to_a_terminal_job_state_writes_one_event(store, settings):
    add_endpoint(store, settings)
    queue = JobQueue(store.db, lease_seconds=30)
    for job_id in ("ftjob-a", "ftjob-b", "ftjob-c", "ftjob-d"):
        add_job(store, job_id)
    store.jobs.cancel("ftjob-a")  # nobody holds it: the API takes it over
    lease = queue.claim("w", "ftjob-b")
    queue.finish(lease, "failed", error={"code": "x", "message": "m", "param": None})
    lease = queue.claim("w", "ftjob-c")
    queue.finish(lease, "queued")  # handed back (worker shutdown): not an end, no event
    queue.finish(queue.claim("w", "ftjob-c"), "succeeded", fine_tuned_model="ft:x")
    lease = queue.claim("w", "ftjob-d")
    store.jobs.cancel("ftjob-d")  # held: only a request, no event yet
    assert "ftjob-d" not in events_by_subject(store)
    queue.finish(lease, "cancelled", message="Job cancelled")
    with pytest.raises(errors.ConflictError):
        store.jobs.cancel("ftjob-d")  # already over: no second event
    assert events_by_subject(store) == {"ftjob-a": ["fine_tuning.job.cancelled"],
                                        "ftjob-b": ["fine_tuning.job.failed"],
                                        "ftjob-c": ["fine_tuning.job.succeeded"],
                                        "ftjob-d": ["fine_tuning.job.cancelled"]}
    assert {d.status for d in store.webhooks.deliveries()} == {"pending"} and len(store.webhooks.deliveries()) == 4


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_route_to_a_terminal_eval_run_state_writes_one_event(store, settings):
    add_endpoint(store, settings)
    queue = EvalRunQueue(store.db, lease_seconds=30)
    canceled, completed, failed = make_run(store), make_run(store), make_run(store)
    run = store.evals.run_by_id(canceled)
    store.evals.cancel_run(run.eval_id, canceled)
    queue.finish(queue.claim("w", completed), "completed")
    queue.finish(queue.claim("w", failed), "failed", {"code": "x", "message": "m"})
    assert events_by_subject(store) == {canceled: ["eval.run.canceled"], completed: ["eval.run.succeeded"],
                                        failed: ["eval.run.failed"]}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_event_goes_to_the_endpoints_that_want_it_and_rolls_back_with_its_transaction(store, settings):
    other = store.projects.ensure("other").id
    every = add_endpoint(store, settings)
    add_endpoint(store, settings, events=["eval.run.failed"])
    add_endpoint(store, settings, project_id=other)
    with store.db.transaction() as c:
        webhooks.enqueue(c, "proj_default", "batch.completed", {"id": "batch_1"})
    assert [d.endpoint_id for d in store.webhooks.deliveries()] == [every.id]
    with pytest.raises(RuntimeError), store.db.transaction() as c:
        webhooks.enqueue(c, "proj_default", "batch.failed", {"id": "batch_2"})
        raise RuntimeError("the state change failed")
    assert [e["data"]["id"] for e in store.webhooks.events()] == ["batch_1"]
    with store.db.transaction() as c:  # a project with no endpoint for it: nothing written
        webhooks.enqueue(c, "proj_nobody", "batch.completed", {"id": "batch_3"})
    assert len(store.webhooks.events()) == 1
    with pytest.raises(ValueError), store.db.transaction() as c:
        webhooks.enqueue(c, "proj_default", "batch.exploded", {"id": "batch_4"})


# -- delivery to a real receiver ---------------------------------------------------------------------

def test_a_delivery_is_signed_so_the_sdk_verifies_it(client, store, settings, rx):
    r = client.post("/v1/webhook_endpoints", json={"url": rx.url, "events": ["fine_tuning.job.cancelled"]})
    assert r.status_code == 200, r.text
    endpoint = r.json()
    assert endpoint["object"] == "webhook_endpoint" and endpoint["secret"].startswith("whsec_")
    assert "secret" not in client.get("/v1/webhook_endpoints").json()["data"][0]  # shown once only
    job = create_job(client, upload(client, training_jsonl(12))["id"])
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    pump(settings, store, lambda: only_delivery(store).status == "delivered")

    [got] = rx.received()
    event = OpenAI(api_key="unused").webhooks.unwrap(got.body, got.headers, secret=endpoint["secret"])
    assert event.type == "fine_tuning.job.cancelled" and event.data.id == job["id"]
    body = json.loads(got.body)
    assert_matches(body, "WebhookFineTuningJobCancelled")
    assert got.headers["webhook-id"] == body["id"]
    with pytest.raises(Exception, match="(?i)signature"):
        OpenAI(api_key="unused").webhooks.unwrap(got.body.replace(b"cancelled", b"succeeded"), got.headers,
                                                 secret=endpoint["secret"])
    [delivery] = client.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries").json()["data"]
    assert delivery["status"] == "delivered" and [a["status_code"] for a in delivery["attempts"]] == [200]
    page = client.get("/webhooks")
    assert page.status_code == 200 and delivery["id"] in page.text and "HTTP 200" in page.text


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_receiver_answering_500_is_retried_until_it_accepts(store, settings, rx):
    add_endpoint(store, settings, rx.url)
    with store.db.transaction() as c:
        webhooks.enqueue(c, "proj_default", "batch.completed", {"id": "batch_1"})
    rx.status = 500
    pump(settings, store, lambda: len(rx.received()) >= 3)
    d = only_delivery(store)
    assert d.status == "pending" and d.last_status_code == 500 and "HTTP 500" in d.last_error
    rx.status = 200
    pump(settings, store, lambda: only_delivery(store).status == "delivered")
    assert [a.status_code for a in store.webhooks.attempts(d.id)] == [500] * (len(rx.received()) - 1) + [200]
    assert len({r.headers["webhook-id"] for r in rx.received()}) == 1  # the same event every time


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_receiver_that_is_down_gets_the_event_when_it_comes_back(store, settings, rx):
    """Through the worker's own dispatcher threads (start_dispatchers), as in production."""
    add_endpoint(store, settings, rx.url)
    rx.stop()
    stop = threading.Event()
    threads = webhooks.start_dispatchers(settings, store, "test-worker", stop)
    try:
        with store.db.transaction() as c:
            webhooks.enqueue(c, "proj_default", "batch.completed", {"id": "batch_1"})
        deadline = time.monotonic() + 15
        while len(store.webhooks.attempts(only_delivery(store).id)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert only_delivery(store).last_status_code is None and only_delivery(store).status == "pending"
        rx.start()
        rx.wait_for(lambda got: len(got) == 1, timeout=15)
        deadline = time.monotonic() + 15
        while only_delivery(store).status != "delivered":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    assert json.loads(rx.received()[0].body)["data"] == {"id": "batch_1"}


@pytest.mark.parametrize("dialect", DIALECTS)  # SQLite: data_version moves; Postgres: enqueue's NOTIFY
def test_idle_dispatchers_read_nothing_until_an_event_is_queued_then_send_it_at_once(store, settings, rx,
                                                                                   monkeypatch):
    """The delivery threads wait on the store's change signal, not a timer: idle, they leave the
    deliveries table alone (settings.poll_seconds is 0.05 s here: a timer would read it ~20 times a
    second per thread), and a new event still goes out at once (not after webhooks.IDLE_RECHECK_S)."""
    add_endpoint(store, settings, rx.url)
    reads: list[float] = []
    next_due = DeliveryQueue.next_due
    monkeypatch.setattr(DeliveryQueue, "next_due", lambda self: reads.append(time.monotonic()) or next_due(self))
    stop = threading.Event()
    threads = webhooks.start_dispatchers(settings, store, "test-worker", stop)
    try:
        time.sleep(0.3)  # each thread has read once (nothing due) and is waiting now
        before = len(reads)
        time.sleep(1.0)
        assert len(reads) == before <= len(threads)
        queued = time.monotonic()
        with store.db.transaction() as c:
            webhooks.enqueue(c, "proj_default", "batch.completed", {"id": "batch_1"})
        rx.wait_for(lambda got: len(got) == 1, timeout=webhooks.IDLE_RECHECK_S / 2)
        assert time.monotonic() - queued < 5  # woken by the commit, not the 30 s safety net
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    assert only_delivery(store).status == "delivered"


def test_a_receiver_that_hangs_is_cut_off_by_the_timeout(store, settings, rx):
    add_endpoint(store, settings, rx.url)
    with store.db.transaction() as c:
        webhooks.enqueue(c, "proj_default", "batch.completed", {"id": "batch_1"})
    rx.hang = 3.0
    started = time.monotonic()
    pump(settings, store, lambda: bool(store.webhooks.attempts(only_delivery(store).id)))
    assert time.monotonic() - started < 2.5  # cut off at the 0.5 s timeout, not after the 3 s hang
    [attempt] = store.webhooks.attempts(only_delivery(store).id)
    assert attempt.status_code is None and "timed out" in attempt.error
    rx.hang = 0.0
    pump(settings, store, lambda: only_delivery(store).status == "delivered")


def test_retries_back_off_exponentially_and_give_up_after_the_retry_window(store, settings, rx):
    s = settings.with_(webhook_retry_base_seconds=5.0, webhook_retry_max_interval_seconds=3600.0)
    delays = [webhooks.retry_delay(s, n) for n in range(1, 12)]
    assert all(0.8 <= d / min(3600, 5 * 2 ** i) <= 1.2 for i, d in enumerate(delays))  # 5, 10, 20 ... 3600 s
    assert delays[-1] <= 1.2 * 3600  # capped
    assert type(s)().webhook_retry_for_seconds >= 24 * 3600  # the default retries for at least a day

    short = settings.with_(webhook_retry_for_seconds=0.3)
    add_endpoint(store, short, rx.url)
    with store.db.transaction() as c:
        webhooks.enqueue(c, "proj_default", "batch.completed", {"id": "batch_1"})
    rx.status = 500
    pump(short, store, lambda: only_delivery(store).status == "failed")
    assert only_delivery(store).finished_at is not None


def test_deleting_an_endpoint_drops_its_pending_deliveries(client, store, settings):
    endpoint = client.post("/v1/webhook_endpoints", json={"url": "http://127.0.0.1:9/hook"}).json()
    with store.db.transaction() as c:
        webhooks.enqueue(c, "proj_default", "batch.completed", {"id": "batch_1"})
    assert len(store.webhooks.deliveries()) == 1
    assert client.delete(f"/v1/webhook_endpoints/{endpoint['id']}").json() == {
        "id": endpoint["id"], "object": "webhook_endpoint.deleted", "deleted": True}
    assert store.webhooks.deliveries() == [] and client.get("/v1/webhook_endpoints").json()["data"] == []
    assert client.delete(f"/v1/webhook_endpoints/{endpoint['id']}").status_code == 404


# -- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, param, says", [
    ({"url": "ftp://example.com/hook"}, "url", "http"),
    ({"url": "file:///etc/passwd"}, "url", "http"),
    ({"url": "http://127.0.0.1:8080/hook"}, "url", "non-public"),
    ({"url": "http://localhost/hook"}, "url", "non-public"),
    ({"url": "http://10.0.0.7/hook"}, "url", "non-public"),
    ({"url": "http://169.254.169.254/latest"}, "url", "non-public"),
    ({"url": "http://[::1]/hook"}, "url", "non-public"),
    ({"url": "http://[::ffff:192.168.0.1]/hook"}, "url", "non-public"),
    ({"url": "http://x:99999/hook"}, "url", "port"),
    ({"url": 5}, "url", "string"),
    ({}, "url", "url"),
    ({"url": "http://8.8.8.8/hook", "events": ["fine_tuning.job.exploded"]}, "events", "exploded"),
    ({"url": "http://8.8.8.8/hook", "events": []}, "events", "non-empty"),
    ({"url": "http://8.8.8.8/hook", "secret": "mine"}, "secret", "Unrecognized"),
])
def test_bad_endpoints_are_a_400_naming_the_field(store, settings, body, param, says):
    strict = settings.with_(webhook_allow_private=False)
    with TestClient(create_app(strict, store=store)) as c:
        r = c.post("/v1/webhook_endpoints", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and says.lower() in r.json()["error"]["message"].lower()


def test_private_receivers_are_allowed_only_when_the_setting_says_so(store, settings, monkeypatch):
    assert webhooks.check_url("http://127.0.0.1:8080/hook", settings) == "http://127.0.0.1:8080/hook"
    with pytest.raises(errors.InvalidRequestError):
        webhooks.check_url("http://127.0.0.1:8080/hook", settings.with_(webhook_allow_private=False))
    monkeypatch.delenv("MODELMILL_WEBHOOK_ALLOW_PRIVATE", raising=False)
    assert not Settings.from_env().webhook_allow_private
    monkeypatch.setenv("MODELMILL_WEBHOOK_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("MODELMILL_WEBHOOK_RETRY_BASE_SECONDS", "0.5")
    from_env = Settings.from_env()
    assert from_env.webhook_allow_private and from_env.webhook_retry_base_seconds == 0.5
    assert set(SCHEMAS) <= set(EVENT_TYPES)
