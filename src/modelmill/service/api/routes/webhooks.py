"""/v1/webhook_endpoints: register, list and delete the caller's project's webhook endpoints, and
read each one's deliveries (a documented ModelMill extension; the events are OpenAI's, see
service/webhooks/outbox.py). The create response holds the endpoint's whsec_ secret, shown only there."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from modelmill.settings import Settings
from modelmill.service.webhooks import outbox as webhooks
from modelmill.service.api import deps
from modelmill.service.schemas.webhooks import (CreateWebhookEndpointRequest, WebhookDelivery, WebhookDeliveryList,
                                                WebhookEndpoint, WebhookEndpointDeleted, WebhookEndpointList)
from modelmill.service.store import Store

router = APIRouter(prefix="/webhook_endpoints", tags=["webhooks"])


@router.post("")
def create_endpoint(body: CreateWebhookEndpointRequest, store: Store = Depends(deps.get_store),
                    settings: Settings = Depends(deps.get_settings), project: str = Depends(deps.get_project)) -> dict:
    endpoint = webhooks.create_endpoint(settings, store, project, body.url, body.events)
    return WebhookEndpoint.of(endpoint, with_secret=True).model_dump()


@router.get("")
def list_endpoints(store: Store = Depends(deps.get_store), project: str = Depends(deps.get_project)) -> dict:
    return WebhookEndpointList(data=[WebhookEndpoint.of(e) for e in store.webhooks.list_endpoints(
        project_id=project)]).model_dump()


@router.get("/{endpoint_id}")
def get_endpoint(endpoint_id: str, store: Store = Depends(deps.get_store),
                 project: str = Depends(deps.get_project)) -> dict:
    return WebhookEndpoint.of(store.webhooks.get_endpoint(endpoint_id, project_id=project)).model_dump()


@router.delete("/{endpoint_id}")
def delete_endpoint(endpoint_id: str, store: Store = Depends(deps.get_store),
                    project: str = Depends(deps.get_project)) -> dict:
    store.webhooks.delete_endpoint(endpoint_id, project_id=project)
    return WebhookEndpointDeleted(id=endpoint_id).model_dump()


@router.get("/{endpoint_id}/deliveries")
def list_deliveries(endpoint_id: str, limit: int = Query(20, ge=1, le=100), store: Store = Depends(deps.get_store),
                    project: str = Depends(deps.get_project)) -> dict:
    """The endpoint's newest deliveries first, each with its attempts."""
    store.webhooks.get_endpoint(endpoint_id, project_id=project)
    rows = store.webhooks.deliveries(project_id=project, endpoint_id=endpoint_id, limit=limit)
    return WebhookDeliveryList(data=[WebhookDelivery.of(d, store.webhooks.attempts(d.id)) for d in rows]).model_dump()
