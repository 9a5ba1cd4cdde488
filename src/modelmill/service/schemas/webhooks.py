"""Wire models for webhook endpoints: a documented ModelMill extension (OpenAI configures webhooks in
its dashboard, with no API for it). The events themselves are OpenAI's Webhook* objects
(store/webhooks.py writes them); these are only the endpoints and their deliveries."""

from __future__ import annotations

from typing import Literal

from modelmill.service.schemas.common import Deletion, OpenAIRequest, WireModel, unix
from modelmill.service.store.webhooks import AttemptRecord, DeliveryRecord, EndpointRecord


class CreateWebhookEndpointRequest(OpenAIRequest):
    url: str  # http(s); checked (scheme, public address) by service/webhooks/outbox.check_url
    events: list[str] | None = None  # event types it receives (e.g. "fine_tuning.job.succeeded"); None = all


class WebhookEndpoint(WireModel):
    omit_if_none = frozenset({"secret"})
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str] | None
    created_at: int
    secret: str | None = None  # only in the create response: it is never shown again

    @classmethod
    def of(cls, e: EndpointRecord, *, with_secret: bool = False) -> "WebhookEndpoint":
        return cls(id=e.id, url=e.url, events=e.events, created_at=unix(e.created_at),
                   secret=e.secret if with_secret else None)


class WebhookEndpointList(WireModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpoint]


class WebhookEndpointDeleted(Deletion):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"


class WebhookAttempt(WireModel):
    started_at: float
    duration_ms: int
    status_code: int | None
    error: str | None

    @classmethod
    def of(cls, a: AttemptRecord) -> "WebhookAttempt":
        return cls(started_at=a.started_at, duration_ms=a.duration_ms, status_code=a.status_code, error=a.error)


class WebhookDelivery(WireModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    event_id: str
    event_type: str
    endpoint_id: str
    status: Literal["pending", "sending", "delivered", "failed"]
    created_at: int
    next_attempt_at: int | None  # while pending
    last_status_code: int | None
    last_error: str | None
    attempts: list[WebhookAttempt]

    @classmethod
    def of(cls, d: DeliveryRecord, attempts: list[AttemptRecord]) -> "WebhookDelivery":
        return cls(id=d.id, event_id=d.event_id, event_type=d.event_type, endpoint_id=d.endpoint_id, status=d.status,
                   created_at=unix(d.created_at),
                   next_attempt_at=unix(d.next_attempt_at) if d.status in ("pending", "sending") else None,
                   last_status_code=d.last_status_code, last_error=d.last_error,
                   attempts=[WebhookAttempt.of(a) for a in attempts])


class WebhookDeliveryList(WireModel):
    object: Literal["list"] = "list"
    data: list[WebhookDelivery]
