"""Job and batch status in Redis, changed only here, by atomic Lua scripts (store/lua/).

A batch hash holds one counter per state; every job transition moves one unit between two
counters in the same script that changes the job, so the counters always equal the sum of the
jobs' states and `status BATCH` is one read. A job that no worker has received yet is a 9-byte
record (store/records.py), not a hash: that keeps a queued prompt cheap in Redis memory and in
submit time. Queue pushes, delayed re-sends, dead letters, crash counts and heartbeats are
written here too, so the schema has one writer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

import redis

from kandinsky_batch.errors import AttemptsExhausted, OverQuota
from kandinsky_batch.keys import DEAD_LETTERS_MAX, BatchField, JobField, JobRef, Keys
from kandinsky_batch.schema import JobState, Priority
from kandinsky_batch.store import records, scripts
from kandinsky_batch.store.reads import SCAN_CHUNK, StatusReader, as_ref

__all__ = ["SCAN_CHUNK", "Chunk", "Created", "Pushed", "Recovered", "StatusStore"]

RELEASE_PER_PASS = 1000  # delayed messages pushed per script call


class Created(IntEnum):
    NEW = 0
    EXISTS = 1
    GONE = 2  # finished and expired: only its record is left, it is not run again


class Recovered(StrEnum):
    QUEUED = "queued"  # handed back: it runs again
    FAILED = "failed"  # attempts exhausted: a dead letter now
    REFUSED = "refused"  # it was not running (someone else moved it first)


@dataclass(frozen=True)
class Chunk:
    """Jobs to record, and the message that carries them (pushed onto `lists[0]`)."""

    batch_id: str
    jobs: Sequence[tuple[int, int]]  # (index, seed), ascending, all in one record shard
    priority: Priority
    envelope: str = ""  # nothing is pushed when empty
    lists: Sequence[str] = ()  # the queue's lists: `Pushed.queue_length` sums them
    tenant: str = ""  # the batch's owner, recorded with its first chunk ('' for none)
    cap: int = 0  # the most unfinished jobs the tenant may have (0: no cap)
    images: int = 0  # images these jobs ask for (the tenant's usage)
    webhook: str = ""  # JSON of the batch's webhook, recorded with its first chunk


@dataclass(frozen=True)
class Pushed:
    """What `StatusStore.submit` did with one chunk."""

    sent: bool  # every job was new: recorded, and the message pushed
    created: list[Created]  # per job (all NEW when sent)
    queue_length: int  # messages waiting on the queue's lists after the push
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


class StatusStore(StatusReader):
    """Reads and changes job/batch status. Shared by the producer and the worker."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int) -> None:
        super().__init__(client, keys)
        self.ttl_s = ttl_s
        # Called with the batch id by whichever transition finishes a batch (writes its manifest).
        self.on_batch_done: Callable[[str], None] | None = None
        self._submit = client.register_script(scripts.lua("submit"))
        self._receive = client.register_script(scripts.lua("receive"))
        self._transition = client.register_script(scripts.lua("transition"))
        self._recover = client.register_script(scripts.lua("recover"))
        self._release_due = client.register_script(scripts.lua("release_due"))

    # -- queues ----------------------------------------------------------------------

    def submit(self, chunks: Sequence[Chunk]) -> list[Pushed]:
        """Record each chunk's jobs as queued and push its message, atomically per chunk.

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

        With `high_water`, the script refuses the chunk (`Pushed.full`) while the queue's lists
        hold that many messages; without, the caller is trusted to have looked. The records say
        they were made at `now_s` (unix seconds; default now).
        """
        jobs = chunk.jobs
        indices = [index for index, _ in jobs]
        if indices != sorted(set(indices)) or records.shard_of(indices[0]) != records.shard_of(indices[-1]):
            raise ValueError("a chunk's indices must be distinct, ascending and in one shard")
        keys = [
            self.keys.batch(chunk.batch_id),
            self._record_key(JobRef(chunk.batch_id, jobs[0][0])),
            self.keys.queue_counts(),
            self.keys.usage(chunk.tenant),
            self.keys.tenants(),
            *chunk.lists,
        ]
        flags = records.EXISTS | (records.LOW if chunk.priority is Priority.LOW else 0)
        packed = b"".join(i.to_bytes(4, "big") + seed.to_bytes(4, "big") for i, seed in jobs)
        args: list[Any] = [
            _now(),
            int(time.time()) if now_s is None else now_s,
            self.keys.records_prefix(chunk.batch_id),
            flags,
            packed,
            chunk.envelope,
            chunk.tenant,
            chunk.cap,
            chunk.images,
            chunk.webhook,
            high_water,
        ]
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

    def push(self, queue_list: str, envelope: str, delay_s: float = 0.0) -> None:
        """Put a message for jobs already recorded on a queue list, now or after `delay_s`.

        A delayed message waits in a sorted set that every worker's reaper drains
        (`release_due`), so it survives the worker that delayed it.
        """
        if delay_s <= 0:
            self.redis.lpush(queue_list, envelope)
            return
        member = json.dumps([queue_list, envelope], separators=(",", ":"))
        self.redis.zadd(self.keys.delayed(), {member: time.time() + delay_s})

    def release_due(self) -> int:
        """Push every delayed message that is due onto its list; how many went."""
        released = 0
        while True:
            n = int(self._release_due(keys=[self.keys.delayed()], args=[time.time(), RELEASE_PER_PASS]))
            released += n
            if n < RELEASE_PER_PASS:
                return released

    def queue_length(self, lists: Sequence[str]) -> int:
        """Messages waiting on a queue's lists (both priorities), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for name in lists:
            pipe.llen(name)
        return sum(pipe.execute())

    # -- worker side -----------------------------------------------------------------

    def receive(
        self,
        batch_id: str,
        jobs: Sequence[tuple[int, int]],
        priority: Priority = Priority.NORMAL,
        queue_list: str = "",
    ) -> list[tuple[Created, int]]:
        """A worker read these `(index, seed)` jobs from a message: give each its hash.

        Jobs the producer never recorded (open-format messages) are created here. Per job:
        NEW, EXISTS or GONE (finished and expired), and its stored seed.
        """
        if not jobs:
            return []
        keys = [self.keys.batch(batch_id), self.keys.queue_counts()]
        args: list[Any] = [
            _now(),
            int(time.time()),
            self.keys.records_prefix(batch_id),
            int(priority is Priority.LOW),
            queue_list,
        ]
        for index, seed in jobs:
            ref = JobRef(batch_id, index)
            keys += [self.keys.job(ref), self._record_key(ref)]
            args += [index, seed]
        return [(Created(int(flag)), int(seed)) for flag, seed in self._receive(keys=keys, args=args)]

    def heartbeat(self, worker: str, info: dict[str, Any], ttl_s: int) -> None:
        """Show a worker alive (and what it serves) for `ttl_s` seconds."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.worker(worker), json.dumps(info), ex=ttl_s)
        pipe.zadd(self.keys.workers(), {worker: time.time()})
        pipe.zremrangebyscore(self.keys.workers(), "-inf", time.time() - 24 * 3600)  # long gone
        pipe.execute()

    def set_manifest(self, batch_id: str, uri: str) -> None:
        self.redis.hset(self.keys.batch(batch_id), BatchField.MANIFEST, uri)

    # -- transitions -----------------------------------------------------------------

    def _job_keys(self, ref: JobRef) -> list[str]:
        return [
            self.keys.job(ref),
            self.keys.batch(ref.batch_id),
            self.keys.events(),
            self.keys.leases(),
            self.keys.owners(),
            self._record_key(ref),
            self.keys.running(),
            self.keys.usage_prefix(),
            self.keys.queue_counts(),
        ]

    def _transition_call(
        self,
        ref: JobRef,
        to: JobState,
        allowed_from: Iterable[JobState],
        fields: Mapping[str, Any] | None,
        bump: JobField | None,
        delete: Sequence[str],
        fence: str,
        cap: int = 0,
    ) -> tuple[list[str], list[Any]]:
        args: list[Any] = [
            to.value,
            ",".join(s.value for s in allowed_from),
            _now(),
            self.ttl_s,
            bump or "",
            ref.id,
            ref.index,
            self.keys.records_prefix(ref.batch_id),
            fence,
            cap,
            len(delete),
            *delete,
        ]
        for name, value in (fields or {}).items():
            args += [name, value]
        return self._job_keys(ref), args

    def _outcome(self, batch_id: str, reply: list[Any]) -> tuple[bool, JobState | None]:
        outcome, state, *finished = reply
        if outcome == b"missing":
            return False, None
        if finished and finished[0] == 1 and self.on_batch_done is not None:
            self.on_batch_done(batch_id)
        return outcome == b"ok", JobState(state.decode())

    def transition(
        self,
        job: str | JobRef,
        to: JobState,
        allowed_from: Iterable[JobState],
        fields: Mapping[str, Any] | None = None,
        bump: JobField | None = None,
        delete: Sequence[str] = (),
        fence: str = "",
        cap: int = 0,
    ) -> tuple[bool, JobState | None]:
        """Move a job to `to` if it is in one of `allowed_from`, set `fields`, drop `delete`.

        With `fence`, only while that worker holds the job's live lease; with `cap`, a finished
        job of a tenant is sent again only while the tenant stays within that many unfinished
        jobs (OverQuota if not). Returns (moved, state before the call); state is None for an
        unknown job.
        """
        ref = as_ref(job)
        if ref is None:
            return False, None
        keys, args = self._transition_call(ref, to, allowed_from, fields, bump, delete, fence, cap)
        reply = self._transition(keys=keys, args=args)
        if reply[0] == b"over_cap":
            raise OverQuota(f"the tenant has reached its cap of {cap} unfinished jobs")
        return self._outcome(ref.batch_id, reply)

    def start(
        self, job: str | JobRef, worker: str, total_steps: int, spec: dict[str, Any], fence: bool = False
    ) -> tuple[bool, JobState | None]:
        """Start a queued job on `worker`; with `fence`, only while `worker` holds its live lease.

        The spec (wire form) is kept with the job from here on, for manifests and retries.
        A job still marked running must be recovered first (`recover`): that counts its crash.
        """
        ref = as_ref(job)
        if ref is None:
            return False, None
        return self.start_many([(ref, total_steps, spec)], worker, fence)[0]

    def start_many(
        self, jobs: Sequence[tuple[JobRef, int, dict[str, Any]]], worker: str, fence: bool = False
    ) -> list[tuple[bool, JobState | None]]:
        """`start` for each `(job, total steps, wire spec)`, in one round trip (a micro-batch's starts)."""
        pipe = self.redis.pipeline(transaction=False)
        allowed = (JobState.QUEUED,)
        for ref, total_steps, spec in jobs:
            fields: dict[str, Any] = {
                JobField.WORKER: worker,
                JobField.STARTED: _now(),
                JobField.STEP: 0,
                JobField.TOTAL_STEPS: total_steps,
                JobField.SPEC: json.dumps(spec),
            }
            keys, args = self._transition_call(
                ref, JobState.RUNNING, allowed, fields, JobField.ATTEMPTS, (), worker if fence else ""
            )
            self._transition(keys=keys, args=args, client=pipe)
        replies = pipe.execute()
        return [self._outcome(ref.batch_id, reply) for (ref, _, _), reply in zip(jobs, replies, strict=True)]

    def succeed(self, job: str | JobRef, outputs: list[str], metadata: str, fence: str = "") -> bool:
        fields: dict[str, Any] = {
            JobField.OUTPUTS: json.dumps(outputs),
            JobField.METADATA: metadata,
            JobField.FINISHED: _now(),
        }
        moved, _ = self.transition(job, JobState.SUCCEEDED, (JobState.RUNNING,), fields, fence=fence)
        return moved

    def fail(self, job: str | JobRef, code: str, message: str, fence: str = "") -> bool:
        """Fail a queued or running job; with `fence`, only while that worker holds its live lease."""
        fields: dict[str, Any] = {
            JobField.ERROR_CODE: code,
            JobField.ERROR_MESSAGE: message[:2000],
            JobField.FINISHED: _now(),
        }
        allowed = (JobState.QUEUED, JobState.RUNNING)
        moved, _ = self.transition(job, JobState.FAILED, allowed, fields, fence=fence)
        return moved

    def requeue(self, job: str | JobRef, transient: bool = False, fence: str = "") -> bool:
        """A running job back to queued; `transient` counts it as a retry (storage down)."""
        bump = JobField.RETRIES if transient else None
        moved, _ = self.transition(job, JobState.QUEUED, (JobState.RUNNING,), bump=bump, fence=fence)
        return moved

    def retry(self, job: str | JobRef, cap: int = 0) -> bool:
        """A failed job back to queued, its old error dropped in the same step.

        With `cap`, OverQuota instead once its batch's tenant has that many unfinished jobs.
        """
        drop = (JobField.ERROR_CODE, JobField.ERROR_MESSAGE, JobField.FINISHED)
        moved, _ = self.transition(job, JobState.QUEUED, (JobState.FAILED,), delete=drop, cap=cap)
        return moved

    def recover(self, job: str | JobRef, max_attempts: int) -> Recovered:
        """A running job whose worker died: back to queued, or failed and a dead letter, in one step."""
        ref = as_ref(job)
        if ref is None:
            return Recovered.REFUSED
        err = AttemptsExhausted("its worker died during %d attempts; not retried again")
        args: list[Any] = [
            _now(),
            self.ttl_s,
            ref.id,
            ref.index,
            self.keys.records_prefix(ref.batch_id),
            max_attempts,
            DEAD_LETTERS_MAX,
            err.code,
            err.message,
        ]
        outcome, _, finished, _ = self._recover(
            keys=[*self._job_keys(ref), self.keys.dead_letters()], args=args
        )
        if finished == 1 and self.on_batch_done is not None:
            self.on_batch_done(ref.batch_id)
        return Recovered(outcome.decode())

    def cancel(self, job: str | JobRef) -> bool:
        return self.cancel_many([job]) == 1

    def cancel_many(self, jobs: Iterable[str | JobRef]) -> int:
        """Cancel queued or running jobs, one pipelined round trip per SCAN_CHUNK; how many moved."""
        moved = 0
        batch: list[JobRef] = []
        for job in jobs:
            ref = as_ref(job)
            if ref is not None:
                batch.append(ref)
            if len(batch) >= SCAN_CHUNK:
                moved += self._cancel_pipelined(batch)
                batch = []
        return moved + (self._cancel_pipelined(batch) if batch else 0)

    def _cancel_pipelined(self, refs: list[JobRef]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        allowed = (JobState.QUEUED, JobState.RUNNING)
        for ref in refs:
            keys, args = self._transition_call(
                ref, JobState.CANCELED, allowed, {JobField.FINISHED: _now()}, None, (), ""
            )
            self._transition(keys=keys, args=args, client=pipe)
        replies = pipe.execute()
        return sum(self._outcome(ref.batch_id, reply)[0] for ref, reply in zip(refs, replies, strict=True))

    def progress(self, job: str | JobRef, step: int, total: int) -> None:
        self.progress_many([job], step, total)

    def progress_many(self, jobs: Sequence[str | JobRef], step: int, total: int) -> None:
        """The step a micro-batch's jobs reached, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.hset(self.keys.job(job), mapping={JobField.STEP: step, JobField.TOTAL_STEPS: total})
        pipe.execute()


def _now() -> str:
    return f"{time.time():.3f}"
