"""The one way jobs go onto a queue: every message is built by `outgoing` and pushed by the store.

A first submit records its jobs and pushes their message in one script (`QueueStore.submit`);
everything after that (retry-failed, the reaper's re-send, the retry after a storage outage)
sends jobs that are already recorded, through `enqueue`, now or after a delay. A first submit
fixes every job's seed before its message is made (`seeded_wire`), so the job is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from kandinsky_batch.broker import kombu_priority
from kandinsky_batch.envelope import task_envelope
from kandinsky_batch.errors import OverQuota
from kandinsky_batch.keys import TASK_NAME, queue_lists
from kandinsky_batch.schema import MAX_SEED, JobSpec, Mode, Priority
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.queues import Chunk, QueueStore
from kandinsky_batch.wire import message_from_wires


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
    """One queue message for `(index, wire spec)` jobs of one mode, the lists it goes on, and what
    a first submit checks and records with it (the tenant's cap, the images asked, the webhook)."""
    queue = settings.queue_for(mode)
    lists = queue_lists(queue)
    envelope = task_envelope(
        TASK_NAME,
        message_from_wires(batch_id, jobs),
        queue,
        kombu_priority(priority),
        kwargsrepr=f"{{batch {batch_id}: {len(jobs)} jobs}}",
    )
    seeds = [(index, int(wire.get("seed", 0))) for index, wire in jobs]
    images = sum(int(wire.get("num_images", 1)) for _, wire in jobs)
    # The message goes onto the first list; the submit script sums the lengths of all of them.
    ordered = lists[::-1] if priority is Priority.LOW else lists
    return Chunk(
        batch_id, seeds, priority, envelope, ordered, tenant, cap=cap, images=images, webhook=webhook
    )


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
    """Send recorded jobs of one batch again, one message per mode, now or after `delay_s`."""
    by_mode: dict[Mode, list[tuple[int, dict[str, Any]]]] = {}
    for index, spec in jobs:
        by_mode.setdefault(spec.mode, []).append((index, spec.wire()))
    for mode, wires in by_mode.items():
        chunk = outgoing(settings, batch_id, mode, wires, priority)
        store.push(chunk.lists[0], chunk.envelope, delay_s)
