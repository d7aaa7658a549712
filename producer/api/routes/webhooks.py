"""`/v1/webhooks`: the secret a tenant's deliveries are signed with, and the deliveries given up on.

Deliveries themselves are sent by the dispatcher (producer/api/webhooks/); these routes read
what the store keeps of them for the key's tenant.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from producer.api.deps import Caller, WebhooksDep
from producer.api.models import DeadDeliveries, WebhookSecret
from producer.api.problems import ERRORS

router = APIRouter(prefix="/v1", responses=ERRORS)


@router.get(
    "/webhooks/secret", summary="The secret webhook deliveries are signed with", response_model=WebhookSecret
)
def webhook_secret(key: Caller, webhooks: WebhooksDep) -> dict[str, str]:
    """Standard Webhooks: verify `webhook-signature` with this `whsec_` secret."""
    return {"tenant": key.tenant, "secret": webhooks.secret(key.tenant)}


@router.get(
    "/webhooks/dead", summary="Webhook deliveries given up on, newest first", response_model=DeadDeliveries
)
def dead_webhooks(
    key: Caller, webhooks: WebhooksDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    dead = webhooks.dead(key.tenant, limit)
    fields = ("id", "url", "type", "attempts", "created", "last_error", "history", "data")
    return {"deliveries": [{f: getattr(d, f) for f in fields} for d in dead]}
