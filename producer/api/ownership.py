"""Which tenant's ids a key may see: its own tenant's jobs and batches (an admin key, every tenant's).

Another tenant's job or batch answers 404, never 403: a key learns nothing of work it cannot see.
"""

from __future__ import annotations

from kandinsky_batch.errors import NotFound
from kandinsky_batch.keys import JobRef, is_batch_id
from kandinsky_batch.schema import BatchStatus
from kandinsky_batch.store.apikeys import ApiKey
from producer.api.async_store import AsyncStore
from producer.client import Client


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
