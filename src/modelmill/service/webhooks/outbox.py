"""Webhooks in OpenAI's format: events written to an outbox in the store, delivered by workers.

    enqueue(c, project_id, event_type, data)   inside the transaction that makes the state change
                                               (a batch completing...): one outbox row per endpoint
                                               that wants the event (store/webhooks.py)
    create_endpoint(settings, store, ...)      check the URL and event types, mint the whsec_ secret
    start_dispatchers(settings, store, ...)    the worker's delivery threads (Worker.run starts them)

Fine-tuning jobs and eval runs announce their terminal states themselves (LeaseTable.on_terminal,
store/lease.py); other work (batches) calls enqueue in the transaction that ends it.

Delivery: a dispatcher thread claims a due delivery on the lease queue (store/webhook_queue.py),
POSTs the event body signed as Standard Webhooks specifies (which is how OpenAI signs, so the
SDK's `client.webhooks.unwrap(body, headers, secret=...)` verifies it), and records the attempt.
A 2xx delivers it; anything else (an error status, a refused connection, a timeout) schedules a
retry with exponential backoff, until settings.webhook_retry_for_seconds after the event. A
worker killed mid-attempt leaves the delivery under a lease that runs out, and the next claim
sends it again: at least once. Receivers dedupe on the webhook-id header (the event id).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import random
import secrets
import socket
import sqlite3
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
from standardwebhooks import Webhook

from modelmill import errors
from modelmill.settings import Settings
from modelmill.service.store import Store
from modelmill.service.store import webhooks as _store
from modelmill.service.store.lease import Lease
from modelmill.service.store.webhook_queue import DeliveryQueue
from modelmill.service.store.webhooks import EVENT_TYPES, EndpointRecord

log = logging.getLogger(__name__)

MAX_URL_CHARS = 2048
# Characters of a failed answer's body kept with its attempt (what the dashboard shows).
ERROR_BODY_CHARS = 300
# Longest retry exponent: 2^40 x base is far past any max interval, and keeps the float finite.
MAX_EXPONENT = 40
# Seconds an idle dispatcher waits on the change signal before it reads the next due time anyway: only
# a safety net (e.g. a delivery whose worker on another Postgres host died mid-attempt sends no NOTIFY).
IDLE_RECHECK_S = 30.0


def enqueue(c: sqlite3.Connection, project_id: str, event_type: str, data: dict, *, now: float | None = None) -> None:
    """Inside transaction `c`: queue event `event_type` (one of store.webhooks.EVENT_TYPES, e.g.
    "batch.completed") with `data` (e.g. {"id": "batch_..."}) for every endpoint of `project_id` that
    wants it. The event commits or rolls back with `c`. `now`: the store's clock, if the caller has it."""
    _store.enqueue(c, project_id, event_type, data, now=now)


# -- endpoints ---------------------------------------------------------------------------------

def create_endpoint(settings: Settings, store: Store, project_id: str, url: object,
                    events: object = None) -> EndpointRecord:
    """A new endpoint of `project_id`, its secret minted here (returned once, in the record).
    InvalidRequestError naming `url` or `events` for bad input."""
    url = check_url(url, settings)
    events = check_events(events)
    # Standard Webhooks secrets: "whsec_" + base64 of the key bytes (24-64 bytes; 32 here).
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    return store.webhooks.create_endpoint(project_id, url, events, secret)


def check_url(url: object, settings: Settings) -> str:
    """`url` if it is an http(s) URL whose host resolves only to public addresses (any address when
    settings.webhook_allow_private); else InvalidRequestError naming `url`."""
    if not isinstance(url, str) or not url.strip():
        raise errors.InvalidRequestError("url must be an http:// or https:// URL", param="url")
    if len(url) > MAX_URL_CHARS:
        raise errors.InvalidRequestError(f"url is longer than {MAX_URL_CHARS} characters", param="url")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as e:
        raise errors.InvalidRequestError(f"url is not a valid URL: {e}", param="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.InvalidRequestError("url must be an http:// or https:// URL with a host", param="url")
    if not settings.webhook_allow_private:
        problem = private_address(parts.hostname)
        if problem:
            raise errors.InvalidRequestError(f"url is refused: {problem} (MODELMILL_WEBHOOK_ALLOW_PRIVATE=1 lifts"
                                             " this check)", param="url")
    return url


def private_address(host: str) -> str | None:
    """Why `host` must not receive webhooks (it resolves to a loopback, private, link-local or other
    non-public address, or not at all), or None. Every address it resolves to is checked, so a
    name with one public and one private address is refused."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as e:
        return f"its host {host!r} could not be resolved ({e})"
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])  # drop an IPv6 zone id
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            return f"its host {host!r} resolves to a non-public address ({ip})"
    return None


def check_events(events: object) -> list[str] | None:
    """The endpoint's event types (None = all); InvalidRequestError naming `events` otherwise."""
    if events is None:
        return None
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise errors.InvalidRequestError("events must be a non-empty list of event types (omit it for every"
                                         " event)", param="events")
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise errors.InvalidRequestError(f"Unknown event type {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}",
                                         param="events")
    return sorted(set(events))


# -- delivery ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Attempt:
    started_at: float
    duration_ms: int
    status_code: int | None  # None: no HTTP answer (refused, timed out, refused address)
    error: str | None  # None on a 2xx

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secret: str, msg_id: str, body: str, at: float) -> dict[str, str]:
    """The Standard Webhooks headers for `body`: webhook-id, webhook-timestamp (`at`, Unix seconds)
    and webhook-signature ("v1,<base64 HMAC-SHA256 of id.timestamp.body>", keyed by the secret's bytes)."""
    stamp = datetime.fromtimestamp(int(at), tz=timezone.utc)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at)),
            "webhook-signature": Webhook(secret).sign(msg_id, stamp, body),
            "content-type": "application/json", "user-agent": "ModelMill-Webhooks/1"}


def send(settings: Settings, http: httpx.Client, out: _store.Outgoing) -> Attempt:
    """One POST of `out`, signed now: a receiver rejects timestamps older than a few minutes, so each
    retry signs afresh. Never raises for the receiver's sake: every failure becomes the Attempt's error."""
    started, t0 = time.time(), time.monotonic()

    def done(code: int | None, error: str | None) -> Attempt:
        return Attempt(started, int((time.monotonic() - t0) * 1000), code, error)

    host = urllib.parse.urlsplit(out.url).hostname or ""
    # Checked again at each attempt: the name may point elsewhere than when it was registered.
    problem = None if settings.webhook_allow_private else private_address(host)
    if problem:
        return done(None, f"not sent: {problem}")
    headers = signed_headers(out.secret, out.event_id, out.body, started)
    try:
        with http.stream("POST", out.url, content=out.body.encode(), headers=headers) as r:
            if 200 <= r.status_code < 300:
                return done(r.status_code, None)
            text = _head(r, time.monotonic() + settings.webhook_timeout_seconds)
            return done(r.status_code, f"HTTP {r.status_code}" + (f": {text}" if text else ""))
    except httpx.TimeoutException as e:
        return done(None, f"timed out after {settings.webhook_timeout_seconds:g} s ({type(e).__name__})")
    except httpx.HTTPError as e:
        return done(None, f"{type(e).__name__}: {e}"[:ERROR_BODY_CHARS])


def _head(r: httpx.Response, deadline: float) -> str:
    """The start of a failed answer's body, for the record: never the whole of a huge one, and no
    longer than until `deadline` (time.monotonic) for one that trickles in."""
    buf = b""
    try:
        for chunk in r.iter_bytes():
            buf += chunk
            if len(buf) >= ERROR_BODY_CHARS or time.monotonic() > deadline:
                break
    except httpx.HTTPError:
        pass
    return buf[:ERROR_BODY_CHARS].decode("utf-8", "replace").strip()


def retry_delay(settings: Settings, attempt: int) -> float:
    """Seconds before the retry after failed attempt number `attempt` (1 = the first): base x 2^(n-1),
    at most the max interval, with +-20% jitter so endpoints that failed together don't retry together."""
    delay = min(settings.webhook_retry_max_interval_seconds,
                settings.webhook_retry_base_seconds * 2.0 ** min(attempt - 1, MAX_EXPONENT))
    return delay * random.uniform(0.8, 1.2)


def lease_seconds(settings: Settings) -> float:
    """How long a claim on a delivery lasts: one attempt (connect, send and read, each up to the
    timeout) with room to spare. A worker killed mid-attempt holds it this long at most."""
    return 3 * settings.webhook_timeout_seconds + settings.lease_seconds


def deliver_next(settings: Settings, store: Store, queue: DeliveryQueue, http: httpx.Client,
                 owner: str) -> str | None:
    """Claim one due delivery, attempt it and record the outcome; its id, or None if none was due."""
    lease = queue.claim(owner)
    if lease is None:
        return None
    try:
        _deliver(settings, store, queue, http, lease)
    except errors.FencedOutError:  # its endpoint was deleted, or the lease ran out mid-attempt
        log.warning("webhook delivery %s: lease lost; the next claim owns it", lease.id)
    return lease.id


def _deliver(settings: Settings, store: Store, queue: DeliveryQueue, http: httpx.Client, lease: Lease) -> None:
    out = store.webhooks.outgoing(lease.id)
    if out is None:  # deleted with its endpoint since the claim
        return
    queue.start(lease)
    attempt = send(settings, http, out)
    if attempt.ok:
        outcome, next_at = "delivered", None
    else:
        next_at = queue.clock() + retry_delay(settings, lease.attempt)
        outcome = "pending" if next_at - out.event_created_at <= settings.webhook_retry_for_seconds else "failed"
        log.info("webhook delivery %s (%s) attempt %d failed: %s; %s", lease.id, out.url, lease.attempt,
                 attempt.error, "retrying" if outcome == "pending" else "giving up")
    queue.record_attempt(lease, started_at=attempt.started_at, duration_ms=attempt.duration_ms,
                         status_code=attempt.status_code, error=attempt.error, outcome=outcome,
                         next_attempt_at=next_at)
    from modelmill.service.core import metrics  # modelmill_webhook_delivery_attempts_total (docs/operations.md)

    metrics.webhook_delivery("retry" if outcome == "pending" else outcome)


class Dispatcher(threading.Thread):
    """One delivery thread of a worker process: claims due deliveries and sends them until `stop`.

    Idle, it waits on the store's change signal (Database.wait_for_change), never on a timer: it reads
    when the next delivery is due (no write lock, unlike a claim) only when something was committed
    or that time has come, so an idle server never queries the deliveries table. On SQLite the signal
    is data_version, which one thread per process reads (lock-free) for every idle waiter, the job
    loop's included; on Postgres it is the LISTEN connection, which store/webhooks.enqueue NOTIFYs
    when it queues a delivery. Either way a new event goes out within milliseconds of its commit."""

    def __init__(self, settings: Settings, store: Store, owner: str, stop: threading.Event):
        super().__init__(name=f"webhooks-{owner}", daemon=True)
        self.settings, self.store, self.owner, self.stop = settings, store, owner, stop
        self.queue = store.webhook_queue(lease_seconds(settings))

    def run(self) -> None:
        # follow_redirects=False: a 3xx is a failed attempt, so a redirect can't aim a delivery at an
        # address check_url refused.
        with httpx.Client(timeout=httpx.Timeout(self.settings.webhook_timeout_seconds),
                          follow_redirects=False) as http:
            while not self.stop.is_set():
                try:
                    self._step(http)
                except Exception:  # noqa: BLE001 - a locked database, a bug: log, keep delivering
                    log.exception("webhook dispatcher %s: unexpected error", self.owner)
                    self.stop.wait(1.0)

    def _step(self, http: httpx.Client) -> None:
        version = self.queue.data_version()  # before the read: a delivery queued during it still wakes us
        due, now = self.queue.next_due(), self.queue.clock()
        if due is not None and due <= now:
            if deliver_next(self.settings, self.store, self.queue, http, self.owner) is not None:
                return
            due = now + 0.05  # another dispatcher took it as we looked
        wait = IDLE_RECHECK_S if due is None else min(max(due - now, 0.01), IDLE_RECHECK_S)
        self.queue.db.wait_for_change(version, wait, self.stop)


def start_dispatchers(settings: Settings, store: Store, worker_id: str, stop: threading.Event) -> list[Dispatcher]:
    """settings.webhook_concurrency delivery threads for a worker process (Worker.run). They run beside
    training, not between jobs, so an event is never held up behind an hours-long job."""
    threads = [Dispatcher(settings, store, f"{worker_id}/webhooks-{i}", stop)
               for i in range(settings.webhook_concurrency)]
    for t in threads:
        t.start()
    return threads
