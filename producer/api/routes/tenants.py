"""`/v1/usage`: what a tenant has queued, run and made.

A key reads its own tenant's usage; an admin key every tenant's (`GET /v1/usage?tenant=` for one,
all without it).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from producer.api.deps import Caller, Sdk
from producer.api.models import TenantsUsage
from producer.api.problems import ERRORS, Problem

router = APIRouter(prefix="/v1", responses=ERRORS)


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
