"""The one way jobs go onto a queue: every message is built by `outgoing` and queued by the store.

A first submit records its jobs and queues their messages in one script (`QueueStore.submit`);
everything after that (retry-failed, the reaper's re-send, the retry after a storage outage)
sends jobs that are already recorded, through `enqueue`, now or after a delay. A first submit
fixes every job's seed before its message is made (`seeded_wire`), so the job is reproducible.

A message carries at most one micro-batch of images (`MAX_BATCH_SIZE`; a job asking for more goes
alone): the fair share serves tenants message by message (store/fair.py), so a bigger message
would make everyone behind it wait for several micro-batches.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

from kandinsky_batch.broker import kombu_priority
from kandinsky_batch.envelope import task_envelope
from kandinsky_batch.errors import OverQuota
from kandinsky_batch.keys import NO_TENANT, TASK_NAME
from kandinsky_batch.schema import MAX_SEED, JobSpec, Mode, Priority
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.queues import Chunk, QueueStore
from kandinsky_batch.wire import message_from_wires


def pieces(
    jobs: Sequence[tuple[int, dict[str, Any]]], max_images: int
) -> Iterator[tuple[int, list[tuple[int, dict[str, Any]]]]]:
    """`(images, jobs)` runs of `jobs`, in order, each asking for at most `max_images` images."""
    run: list[tuple[int, dict[str, Any]]] = []
    images = 0
    for job in jobs:
        n = int(job[1].get("num_images", 1))
        if run and images + n > max_images:
            yield images, run
            run, images = [], 0
        run.append(job)
        images += n
    if run:
        yield images, run


def outgoing(
    settings: Settings,
    batch_id: str,
    mode: Mode,
    jobs: Sequence[tuple[int, dict[str, Any]]],
    priority: Priority,
    tenant: str = "",
    cap: int = 0,
    webhook: str = "",
) -> Chunk:
    """The queue messages for `(index, wire spec)` jobs of one mode, and what a first submit
    checks and records with them (the tenant's cap, the images asked, the webhook)."""
    queue = settings.queue_for(mode)
    messages = [
        (
            images,
            task_envelope(
                TASK_NAME,
                message_from_wires(batch_id, run),
                queue,
                kombu_priority(priority),
                kwargsrepr=f"{{batch {batch_id}: {len(run)} jobs}}",
                tenant=tenant or NO_TENANT,
            ),
        )
        for images, run in pieces(jobs, settings.max_batch_size)
    ]
    seeds = [(index, int(wire.get("seed", 0))) for index, wire in jobs]
    images = sum(n for n, _ in messages)
    return Chunk(batch_id, seeds, priority, messages, queue, tenant, cap=cap, images=images, webhook=webhook)


def seeded_wire(spec: JobSpec, draw: random.Random) -> dict[str, Any]:
    """The job's wire form with its seed fixed now if the caller gave none, so it is reproducible."""
    wire = spec.wire()
    wire.setdefault("seed", draw.randint(0, MAX_SEED))
    return wire


def cap_reached(tenant: str, cap: int, refused: list[int]) -> OverQuota:
    """What a submit the store refused for the tenant's cap raises: the indices it did not send."""
    return OverQuota(f"tenant {tenant!r} has reached its cap of {cap} unfinished jobs", sorted(refused))


def enqueue(
    store: QueueStore,
    settings: Settings,
    batch_id: str,
    jobs: Sequence[tuple[int, JobSpec]],
    priority: Priority,
    delay_s: float = 0.0,
) -> None:
    """Send recorded jobs of one batch again, for the batch's tenant, one message per mode and
    micro-batch, now or after `delay_s`."""
    tenant = store.batch_tenant(batch_id)
    by_mode: dict[Mode, list[tuple[int, dict[str, Any]]]] = {}
    for index, spec in jobs:
        by_mode.setdefault(spec.mode, []).append((index, spec.wire()))
    for mode, wires in by_mode.items():
        chunk = outgoing(settings, batch_id, mode, wires, priority, tenant)
        store.push(chunk.queue, priority, tenant, chunk.messages, delay_s)
