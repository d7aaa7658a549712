"""Who is calling: the API key in `Authorization: Bearer ...`, and which tenant's ids it may see.

Another tenant's job or batch answers 404, never 403: a key learns nothing of work it cannot see.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kandinsky_batch.errors import NotFound
from kandinsky_batch.keys import JobRef, is_batch_id
from kandinsky_batch.schema import BatchStatus
from kandinsky_batch.store.apikeys import ApiKey
from producer.api.async_store import AsyncStore, Authenticated
from producer.api.problems import Problem
from producer.client import Client

bearer = HTTPBearer(auto_error=False, description="An API key made with `kandinsky-batch keys create`.")


async def client_of(request: Request) -> Client:  # no I/O: on the event loop, not a thread hop
    client: Client = request.app.state.client
    return client


Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def caller(request: Request, credentials: Credentials) -> ApiKey:
    """The calling key, checked on the event loop (producer/api/async_store.py): no thread hop."""
    store: AsyncStore = request.app.state.store
    return allowed(await store.authenticate(secret_of(credentials)))


def secret_of(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Problem(401, "Unauthorized", "send an API key as `Authorization: Bearer <key>`")
    return credentials.credentials


async def presented(credentials: Credentials) -> str:
    """The key sent, unchecked (a missing one is 401 before the body is looked at)."""
    return secret_of(credentials)


Secret = Annotated[str, Depends(presented)]


def allowed(answer: Authenticated) -> ApiKey:
    """The key of an authentication's answer; 401 for an unknown key, 429 past its rate."""
    key, wait_s = answer
    if key is None:
        raise Problem(401, "Unauthorized", "unknown or revoked API key")
    if wait_s:
        detail = f"this key may make {key.rate_per_s:g} requests per second"
        raise Problem(429, "Too many requests", detail, headers={"Retry-After": str(math.ceil(wait_s))})
    return key


def owned_batch(client: Client, key: ApiKey, batch_id: str) -> BatchStatus:
    """The batch if this key's tenant owns it (an admin key sees every tenant's); else NotFound.

    An id submit would refuse is not looked up at all: it names no batch.
    """
    _check_id(batch_id)
    return _owned(key, client.status_store.batch(batch_id))


async def owned_batch_on_loop(store: AsyncStore, key: ApiKey, batch_id: str) -> BatchStatus:
    """`owned_batch` over the asyncio client, for a route that runs on the event loop."""
    _check_id(batch_id)
    return _owned(key, await store.batch(batch_id))


def _check_id(batch_id: str) -> None:
    if not is_batch_id(batch_id):
        raise NotFound(f"batch {batch_id!r} not found")


def _owned(key: ApiKey, batch: BatchStatus) -> BatchStatus:
    if not key.admin and batch.tenant != key.tenant:
        raise NotFound(f"batch {batch.batch_id!r} not found")
    return batch


def owned_job(client: Client, key: ApiKey, job_id: str) -> JobRef:
    ref = JobRef.parse(job_id)
    if ref is None:
        raise NotFound(f"job {job_id!r} not found")
    try:
        owned_batch(client, key, ref.batch_id)
    except NotFound:
        raise NotFound(f"job {job_id!r} not found") from None
    return ref
