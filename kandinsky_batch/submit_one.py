"""One job submitted alone, made the same way by the SDK (`Client.submit`) and `POST /v1/jobs`.

`OneJob` is the job made ready once: its wire form with the seed fixed now (so it is
reproducible), its priority and its webhook. For a batch id, a tenant and a cap it gives the
chunk of its one message (`chunk`), which the store's submit script records and pushes in one
step. `submit_one` runs that on a sync client and waits while the queue is at its high-water
mark, as a bulk submit does. The API runs the same script with the same keys and arguments on
its asyncio client (`QueueStore.submit_call`, producer/api/async_store.py), where the script
refuses at the mark instead: a request must not wait. What the script wrote is what a read of
the new job gives until a worker receives it (`queued`), so the API answers without reading it back.
"""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass
from typing import Any

from kandinsky_batch.enqueue import cap_reached, outgoing, seeded_wire
from kandinsky_batch.keys import JobRef
from kandinsky_batch.schema import JobSpec, JobStatus, Priority
from kandinsky_batch.settings import Settings
from kandinsky_batch.store import records
from kandinsky_batch.store.queues import Chunk, QueueStore
from kandinsky_batch.store.reads import job_status_from_record

ROOM_POLL_S = 0.2  # how often a sync submit at the high-water mark looks for room
# Seeds need to be fixed and varied, not secret: one OS draw, then a fast generator.
SEEDS = random.Random(secrets.randbits(64))


@dataclass(frozen=True)
class OneJob:
    """A valid job ready to submit: its wire form, seed fixed, and what its batch records with it."""

    spec: JobSpec
    wire: dict[str, Any]
    priority: Priority = Priority.NORMAL
    webhook: str = ""  # JSON of the job's webhook ('' for none)

    @classmethod
    def seeded(cls, spec: JobSpec, priority: Priority = Priority.NORMAL, webhook: str = "") -> OneJob:
        """The job with its seed drawn now if the spec gives none (kept by every later send)."""
        return cls(spec, seeded_wire(spec, SEEDS), Priority(priority), webhook)

    @property
    def seed(self) -> int:
        return int(self.wire["seed"])

    def chunk(self, settings: Settings, batch_id: str, tenant: str = "", cap: int = 0) -> Chunk:
        """The job as job 0 of `batch_id`, owned by `tenant` and held to its `cap` (0: none)."""
        jobs = [(0, self.wire)]
        return outgoing(settings, batch_id, self.spec.mode, jobs, self.priority, tenant, cap, self.webhook)

    def queued(self, batch_id: str, created_s: int) -> JobStatus:
        """The job as a read shows it after a submit at `created_s` (unix seconds) sent it."""
        record = records.submitted(self.priority, self.seed, created_s)
        return job_status_from_record(JobRef(batch_id, 0), record)


def submit_one(
    store: QueueStore, settings: Settings, job: OneJob, batch_id: str, tenant: str = "", cap: int = 0
) -> JobRef:
    """Submit `job` as job 0 of `batch_id` on a sync client, once its queue has room.

    A job of that batch recorded before (a repeated idempotency key) is left as it is: nothing
    is sent twice. Raises OverQuota when the tenant is at its cap.
    """
    chunk = job.chunk(settings, batch_id, tenant, cap)
    while store.queue_length(chunk.queue) >= settings.queue_high_water:
        time.sleep(ROOM_POLL_S)
    [pushed] = store.submit([chunk])
    if pushed.over_cap is not None:
        raise cap_reached(tenant, cap, [0])
    return JobRef(batch_id, 0)
