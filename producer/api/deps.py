"""What routes share, as FastAPI dependencies: the calling key, the SDK, the process's handles,
and the 429 of a tenant over its cap.

A route module takes these by their `Annotated` aliases (`key: Caller`, `client: Sdk`,
`store: StoreDep`) and imports nothing from another route module. Each dependency is a
coroutine that does no I/O but the key check, so resolving one takes no thread: `/healthz` must
answer while the threads are stuck, and a hop to the pool costs every request.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from kandinsky_batch.errors import OverQuota
from kandinsky_batch.store.apikeys import ApiKey
from kandinsky_batch.store.webhooks import WebhookStore
from producer.api.async_store import AsyncStore, Authenticated
from producer.api.estimates import DrainRate
from producer.api.keyed_ids import KeyedBatchIds
from producer.api.problems import Problem
from producer.api.slots import Limits
from producer.client import Client

OVER_QUOTA_RETRY_S = 30
T = TypeVar("T")

bearer = HTTPBearer(auto_error=False, description="An API key made with `kandinsky-batch keys create`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


# The process's handles, made once by `create_app` and kept on `app.state`.


def on_state(name: str, kind: type[T]) -> Callable[[Request], Awaitable[T]]:
    """A dependency that gives `app.state.<name>` (a `kind`): no I/O, no thread."""

    async def handle(request: Request) -> T:
        value: T = getattr(request.app.state, name)
        return value

    handle.__name__ = f"{name}_of"
    return handle


Sdk = Annotated[Client, Depends(on_state("client", Client))]
StoreDep = Annotated[AsyncStore, Depends(on_state("store", AsyncStore))]
LimitsDep = Annotated[Limits, Depends(on_state("limits", Limits))]
DrainDep = Annotated[DrainRate, Depends(on_state("drain", DrainRate))]
BatchIdsDep = Annotated[KeyedBatchIds, Depends(on_state("batch_ids", KeyedBatchIds))]
WebhooksDep = Annotated[WebhookStore, Depends(on_state("webhooks", WebhookStore))]
RegistryDep = Annotated[CollectorRegistry, Depends(on_state("registry", CollectorRegistry))]


# The calling key: `Authorization: Bearer ...`.


async def caller(store: StoreDep, credentials: Credentials) -> ApiKey:
    """The calling key, checked on the event loop (producer/api/async_store.py): no thread hop."""
    return allowed(await store.authenticate(secret_of(credentials)))


def secret_of(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Problem(401, "Unauthorized", "send an API key as `Authorization: Bearer <key>`")
    return credentials.credentials


async def presented(credentials: Credentials) -> str:
    """The key sent, unchecked (a missing one is 401 before the body is looked at)."""
    return secret_of(credentials)


def allowed(answer: Authenticated) -> ApiKey:
    """The key of an authentication's answer; 401 for an unknown key, 429 past its rate."""
    key, wait_s = answer
    if key is None:
        raise Problem(401, "Unauthorized", "unknown or revoked API key")
    if wait_s:
        detail = f"this key may make {key.rate_per_s:g} requests per second"
        raise Problem(429, "Too many requests", detail, headers={"Retry-After": str(math.ceil(wait_s))})
    return key


Caller = Annotated[ApiKey, Depends(caller)]
Secret = Annotated[str, Depends(presented)]


def over_quota(exc: OverQuota, **extra: Any) -> Problem:
    """The answer when a tenant's cap on unfinished jobs refused a submit or a retry: 429, and
    `extra` says what was done before the cap was reached."""
    headers = {"Retry-After": str(OVER_QUOTA_RETRY_S)}
    return Problem(429, "Too many queued jobs", exc.message, headers=headers, **extra)
