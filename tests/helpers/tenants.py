"""Jobs submitted for a tenant the way the HTTP API does (the bulk submitter with a tenant), and a
queue's messages read in the order workers are served them."""

from __future__ import annotations

import uuid
from typing import Any

from kandinsky_batch.envelope import call_kwargs
from kandinsky_batch.keys import TASK_NAME, JobRef, queue_lists
from kandinsky_batch.schema import Priority
from kandinsky_batch.store.status import StatusStore
from kandinsky_batch.store.taken import TakenStore
from kandinsky_batch.wire import parse_message, validate_spec
from producer.client import Client
from producer.submit import Submitter


def submit_as(
    client: Client, tenant: str, specs: list[dict[str, Any]], priority: Priority = Priority.NORMAL
) -> list[str]:
    """Submit `specs` as one batch of `tenant` ('' for none); the job ids, in order."""
    batch = f"{tenant or 'none'}-{uuid.uuid4().hex[:8]}"
    submitter = Submitter(client.settings, client.status_store, batch, priority, tenant=tenant)
    for index, spec in enumerate(specs):
        submitter.add(index, validate_spec(spec, client.settings))
    submitter.close()
    return [JobRef(batch, index).id for index in range(len(specs))]


def drain(store: StatusStore, queue: str, most: int = 1) -> list[list[str]]:
    """Take every message waiting on `queue`, `most` at a time, as a worker would; the job ids of
    each message, in the order taken. Nothing is left to run (the takes are dropped)."""
    taken = TakenStore(store.redis, store.keys, ttl_s=60)
    order: list[list[str]] = []
    while got := taken.take("drain", queue, most):
        for item in got:
            message = call_kwargs(item.message, TASK_NAME)
            parsed = parse_message(message)
            order.append([JobRef(parsed.batch_id, e.index).id for e in parsed.entries])
    taken.drop("drain")
    return order


def clear(store: StatusStore, queue: str) -> int:
    """Take every message waiting on `queue` and forget them (what a test with no worker does to
    make room); how many there were."""
    taken = TakenStore(store.redis, store.keys, ttl_s=60)
    count = len(taken.take("clear", queue, most=1_000_000))
    taken.drop("clear")
    return count


def waiting_messages(store: StatusStore, queue: str) -> list[bytes]:
    """The envelope of every message waiting on `queue`, on its Celery lists and in its fair
    structures, every priority, left where they are."""
    found: list[bytes] = []
    for name in queue_lists(queue):
        found += store.redis.lrange(name, 0, -1)  # type: ignore[arg-type]
    for priority in Priority:
        for tenant in store.redis.zrange(store.keys.fair(queue, priority), 0, -1):  # type: ignore[union-attr]
            entries = store.redis.lrange(store.keys.fair_tenant(queue, priority, tenant.decode()), 0, -1)
            found += [entry.partition(b"\n")[2] for entry in entries]  # type: ignore[union-attr]
    return found
