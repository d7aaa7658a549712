"""Putting jobs on their queues: how messages and their jobs' records go into Redis, in one step.

A chunk of new jobs is recorded as queued and its messages queued in one script (`submit`), so a
job is recorded if and only if its message was sent. Messages wait in their tenant's fair
structure, which feeds the queue's Celery list (store/fair.py). Later sends of jobs already
recorded (retry-failed, the reaper's re-send, the retry after a storage outage) queue messages
now or after a delay (`push`): a delayed one waits in a sorted set that every worker's reaper
drains (`release_due`), so it survives the worker that delayed it. StatusStore
(store/status.py) adds the transitions of jobs once they are queued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis

from kandinsky_batch.keys import NO_TENANT, JobRef, Keys, queue_list_of
from kandinsky_batch.schema import Priority
from kandinsky_batch.store import records, scripts
from kandinsky_batch.store.fair import FairQueues, fair_keys
from kandinsky_batch.store.reads import StatusReader

RELEASE_PER_PASS = 1000  # delayed messages pushed per script call


class Created(IntEnum):
    NEW = 0
    EXISTS = 1
    GONE = 2  # finished and expired: only its record is left, it is not run again


@dataclass(frozen=True)
class Chunk:
    """Jobs to record, and the messages that carry them (queued for the tenant on `queue`)."""

    batch_id: str
    jobs: Sequence[tuple[int, int]]  # (index, seed), ascending, all in one record shard
    priority: Priority
    messages: Sequence[tuple[int, str]] = ()  # (images, envelope) each; nothing is queued when empty
    queue: str = ""  # the Celery queue: `Pushed.queue_length` counts its lists and structures
    tenant: str = ""  # the batch's owner, recorded with its first chunk ('' for none)
    cap: int = 0  # the most unfinished jobs the tenant may have (0: no cap)
    images: int = 0  # images these jobs ask for (the tenant's usage)
    webhook: str = ""  # JSON of the batch's webhook, recorded with its first chunk


@dataclass(frozen=True)
class Pushed:
    """What `StatusStore.submit` did with one chunk."""

    sent: bool  # every job was new: recorded, and the message pushed
    created: list[Created]  # per job (all NEW when sent)
    queue_length: int  # messages waiting on the queue (every priority) after the push
    over_cap: int | None = None  # refused for the tenant's cap: its unfinished jobs, else None
    ahead: int | None = None  # when sent: the jobs ahead of its first one (queue_position's estimate)
    full: bool = False  # refused at the high-water mark (`queue_length` messages waiting)


def pushed_from(chunk: Chunk, reply: list[Any]) -> Pushed:
    """What the submit script's reply for `chunk` says it did."""
    sent, found, length = reply[:3]
    if sent == 3:
        return Pushed(False, [], int(length), full=True)
    if sent == 2:
        return Pushed(False, [], 0, over_cap=int(length))
    if sent:
        return Pushed(True, [Created.NEW] * len(chunk.jobs), int(length), ahead=int(reply[3]))
    decoded = [records.decode(found, n * records.RECORD_BYTES) for n in range(len(chunk.jobs))]
    return Pushed(False, [Created.NEW if r is None else Created.EXISTS for r in decoded], 0)


class QueueStore(StatusReader):
    """Reads, and the writes that put jobs on queues; StatusStore adds the job transitions."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        super().__init__(client, keys)
        self.fair = FairQueues(client, keys)
        self._submit = client.register_script(scripts.lua("submit"))
        self._push = client.register_script(scripts.lua("push"))
        self._release_due = client.register_script(scripts.lua("release_due"))

    def submit(self, chunks: Sequence[Chunk]) -> list[Pushed]:
        """Record each chunk's jobs as queued and queue its messages, atomically per chunk.

        A chunk goes only if every job in it is new; otherwise it changes nothing and its
        `created` says which are new, so the caller can send those in a message of their own.
        All chunks go in one pipelined round trip.
        """
        calls = [self.submit_call(chunk) for chunk in chunks]
        if len(calls) == 1:  # one chunk (a single job): one EVALSHA, no pipeline's SCRIPT EXISTS
            replies = [self._submit(keys=calls[0][0], args=calls[0][1])]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                self._submit(keys=keys, args=args, client=pipe)
            replies = pipe.execute()
        return [pushed_from(chunk, reply) for chunk, reply in zip(chunks, replies, strict=True)]

    def submit_call(
        self, chunk: Chunk, high_water: int = 0, now_s: int | None = None
    ) -> tuple[list[str], list[Any]]:
        """The submit script's keys and arguments for one chunk, for this client or an asyncio one.

        With `high_water`, the script refuses the chunk (`Pushed.full`) while the queue holds that
        many messages (on its lists and in its fair structures, every priority); without, the
        caller is trusted to have looked. The records say they were made at `now_s` (unix
        seconds; default now).
        """
        jobs = chunk.jobs
        indices = [index for index, _ in jobs]
        if indices != sorted(set(indices)) or records.shard_of(indices[0]) != records.shard_of(indices[-1]):
            raise ValueError("a chunk's indices must be distinct, ascending and in one shard")
        lists, fair = fair_keys(self.keys, chunk.queue, chunk.priority) if chunk.queue else ([], [])
        keys = [
            self.keys.batch(chunk.batch_id),
            self._record_key(JobRef(chunk.batch_id, jobs[0][0])),
            self.keys.queue_counts(),
            self.keys.usage(chunk.tenant),
            self.keys.tenants(),
            self.keys.weights(),
            *lists,
            *fair,
        ]
        flags = records.submitted_flags(chunk.priority)
        packed = b"".join(i.to_bytes(4, "big") + seed.to_bytes(4, "big") for i, seed in jobs)
        args: list[Any] = [
            now(),
            int(time.time()) if now_s is None else now_s,
            self.keys.records_prefix(chunk.batch_id),
            flags,
            packed,
            chunk.tenant,
            chunk.cap,
            chunk.images,
            chunk.webhook,
            high_water,
            len(lists),
        ]
        for images, envelope in chunk.messages:
            args += [images, envelope]
        return keys, args

    def create_jobs(
        self, batch_id: str, jobs: Sequence[tuple[int, int]], priority: Priority = Priority.NORMAL
    ) -> list[Created]:
        """Record `(index, seed)` jobs as queued with no message (tests, benchmarks, tools)."""
        created: list[Created] = []
        for shard_jobs in records.by_shard(jobs):
            [first] = self.submit([Chunk(batch_id, shard_jobs, priority)])
            created += first.created
            new = [job for job, flag in zip(shard_jobs, first.created, strict=True) if flag is Created.NEW]
            if not first.sent and new:
                self.submit([Chunk(batch_id, new, priority)])
        return created

    def push(
        self,
        queue: str,
        priority: Priority,
        tenant: str,
        messages: Sequence[tuple[int, str]],
        delay_s: float = 0.0,
    ) -> None:
        """Queue `(images, envelope)` messages of jobs already recorded for `tenant`, now or after
        `delay_s`, behind the tenant's others in the fair structure of `queue` at `priority`.

        A delayed message waits in a sorted set that every worker's reaper drains
        (`release_due`), so it survives the worker that delayed it.
        """
        if not messages:
            return
        fed, fair = queue_list_of(queue, priority), self.keys.fair(queue, priority)
        tenant = tenant or NO_TENANT
        if delay_s <= 0:
            args: list[Any] = [tenant]
            for images, envelope in messages:
                args += [images, envelope]
            self._push(keys=[self.keys.weights(), fed, fair], args=args)
            return
        due = time.time() + delay_s
        members = {
            json.dumps([fed, fair, tenant, images, envelope], separators=(",", ":")): due
            for images, envelope in messages
        }
        self.redis.zadd(self.keys.delayed(), members)

    def release_due(self) -> int:
        """Queue every delayed message that is due, and feed its list; how many went."""
        released = 0
        keys = [self.keys.delayed(), self.keys.weights()]
        while True:
            n = int(self._release_due(keys=keys, args=[time.time(), RELEASE_PER_PASS]))
            released += n
            if n < RELEASE_PER_PASS:
                return released

    def queue_length(self, queue: str) -> int:
        """Messages waiting on a queue (its lists and fair structures, every priority), in one round trip."""
        return sum(self.fair.waiting(queue).values())


def now() -> str:
    """The time as the scripts store it: unix seconds with milliseconds."""
    return f"{time.time():.3f}"
