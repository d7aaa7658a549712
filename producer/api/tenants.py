"""What a tenant may read about itself: usage, its webhook signing secret, its dead webhooks.

An admin key reads every tenant's usage (`GET /v1/usage?tenant=` for one, all without it).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from kandinsky_batch.store.webhooks import WebhookStore
from producer.api.jobs import Caller, Sdk
from producer.api.models import DeadDeliveries, TenantsUsage, WebhookSecret
from producer.api.problems import ERRORS, Problem

router = APIRouter(prefix="/v1", responses=ERRORS)


def _webhooks(request: Request) -> WebhookStore:
    store: WebhookStore = request.app.state.webhooks
    return store


@router.get("/usage", summary="Jobs by state and images, per tenant", response_model=TenantsUsage)
def usage(key: Caller, client: Sdk, tenant: str | None = None) -> dict[str, Any]:
    """The key's tenant's usage; for an admin key, one tenant's (`tenant=`) or every tenant's."""
    reader = client.status_store
    if not key.admin:
        if tenant not in (None, key.tenant):
            raise Problem(404, "Not found", f"tenant {tenant!r} not found")
        return {"tenants": {key.tenant: reader.usage(key.tenant)}}
    names = [tenant] if tenant else reader.tenants_with_usage()
    return {"tenants": {name: reader.usage(name) for name in names}}


@router.get(
    "/webhooks/secret", summary="The secret webhook deliveries are signed with", response_model=WebhookSecret
)
def webhook_secret(request: Request, key: Caller) -> dict[str, str]:
    """Standard Webhooks: verify `webhook-signature` with this `whsec_` secret."""
    return {"tenant": key.tenant, "secret": _webhooks(request).secret(key.tenant)}


@router.get(
    "/webhooks/dead", summary="Webhook deliveries given up on, newest first", response_model=DeadDeliveries
)
def dead_webhooks(
    request: Request, key: Caller, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    dead = _webhooks(request).dead(key.tenant, limit)
    fields = ("id", "url", "type", "attempts", "created", "last_error", "history", "data")
    return {"deliveries": [{f: getattr(d, f) for f in fields} for d in dead]}
