"""Job and batch status in Redis, changed only here, by atomic Lua scripts (store/lua/).

A batch hash holds one counter per state; every job transition moves one unit between two
counters in the same script that changes the job, so the counters always equal the sum of the
jobs' states and `status BATCH` is one read. A job that no worker has received yet is a 9-byte
record (store/records.py), not a hash: that keeps a queued prompt cheap in Redis memory and in
submit time. Submits, queue pushes and delayed re-sends are store/queues.py's; dead letters,
crash counts and heartbeats are written here too, so the schema has one writer.

A move that finishes a batch (its last job becomes terminal) says so in what it returns
(`Moved.batch_done`, `CanceledJobs.batches_done`, `Recovery.batch_done`): the caller that saw
the batch finish writes its manifest (kandinsky_batch/manifest.py). A status change never
writes to storage itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import redis

from kandinsky_batch.errors import AttemptsExhausted, OverQuota
from kandinsky_batch.gpu_time import GpuShare
from kandinsky_batch.keys import DEAD_LETTERS_MAX, BatchField, JobField, JobRef, Keys
from kandinsky_batch.schema import JobState, Priority
from kandinsky_batch.store import scripts
from kandinsky_batch.store.queues import Created, QueueStore, now
from kandinsky_batch.store.reads import SCAN_CHUNK, as_ref


class Recovered(StrEnum):
    QUEUED = "queued"  # handed back: it runs again
    FAILED = "failed"  # attempts exhausted: a dead letter now
    REFUSED = "refused"  # it was not running (someone else moved it first)


@dataclass(frozen=True)
class Moved:
    """What one transition did. True when the job moved."""

    moved: bool
    before: JobState | None  # its state before the call; None for an unknown job
    batch_done: bool = False  # this move finished its batch: the caller writes the manifest

    def __bool__(self) -> bool:
        return self.moved


@dataclass(frozen=True)
class CanceledJobs:
    """What `cancel_many` did: how many jobs it canceled, and the batches those cancels finished."""

    count: int
    batches_done: tuple[str, ...] = ()


class Recovery(NamedTuple):
    """What `recover` did with a job whose worker died, and whether that finished its batch."""

    outcome: Recovered
    batch_done: bool = False


class StatusStore(QueueStore):
    """Reads and changes job/batch status. Shared by the producer and the worker."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int) -> None:
        super().__init__(client, keys)
        self.ttl_s = ttl_s
        self._receive = client.register_script(scripts.lua("receive"))
        self._transition = client.register_script(scripts.lua("transition"))
        self._recover = client.register_script(scripts.lua("recover"))

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
            now(),
            int(time.time()),
            self.keys.records_prefix(batch_id),
            priority.value,
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
        spent: tuple[str, GpuShare] | None = None,
    ) -> tuple[list[str], list[Any]]:
        mode, share = spent or ("", GpuShare(0))
        args: list[Any] = [
            to.value,
            ",".join(s.value for s in allowed_from),
            now(),
            self.ttl_s,
            bump or "",
            ref.id,
            ref.index,
            self.keys.records_prefix(ref.batch_id),
            fence,
            cap,
            mode,
            share.us,
            "" if share.cost_n is None else share.cost_n,
            len(delete),
            *delete,
        ]
        for name, value in (fields or {}).items():
            args += [name, value]
        return self._job_keys(ref), args

    @staticmethod
    def _moved(reply: list[Any]) -> Moved:
        outcome, state, *finished = reply
        if outcome == b"missing":
            return Moved(False, None)
        return Moved(outcome == b"ok", JobState(state.decode()), bool(finished and finished[0] == 1))

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
        spent: tuple[str, GpuShare] | None = None,
    ) -> Moved:
        """Move a job to `to` if it is in one of `allowed_from`, set `fields`, drop `delete`.

        With `fence`, only while that worker holds the job's live lease; with `cap`, a finished
        job of a tenant is sent again only while the tenant stays within that many unfinished
        jobs (OverQuota if not); with `spent` (its mode and GPU share), the move adds that share
        to its batch's and its tenant's counters. Says whether it moved, the state before the
        call (None for an unknown job), and whether this move finished the job's batch.
        """
        ref = as_ref(job)
        if ref is None:
            return Moved(False, None)
        keys, args = self._transition_call(ref, to, allowed_from, fields, bump, delete, fence, cap, spent)
        reply = self._transition(keys=keys, args=args)
        if reply[0] == b"over_cap":
            raise OverQuota(f"the tenant has reached its cap of {cap} unfinished jobs")
        return self._moved(reply)

    def start(
        self, job: str | JobRef, worker: str, total_steps: int, spec: dict[str, Any], fence: bool = False
    ) -> tuple[bool, JobState | None]:
        """Start a queued job on `worker`; with `fence`, only while `worker` holds its live lease.

        Returns (moved, state before the call): a start never finishes a batch. The spec (wire
        form) is kept with the job from here on, for manifests and retries. A job still marked
        running must be recovered first (`recover`): that counts its crash.
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
                JobField.STARTED: now(),
                JobField.STEP: 0,
                JobField.TOTAL_STEPS: total_steps,
                JobField.SPEC: json.dumps(spec),
            }
            keys, args = self._transition_call(
                ref, JobState.RUNNING, allowed, fields, JobField.ATTEMPTS, (), worker if fence else ""
            )
            self._transition(keys=keys, args=args, client=pipe)
        replies = pipe.execute()
        moves = [self._moved(reply) for reply in replies]
        return [(moved.moved, moved.before) for moved in moves]

    def succeed(
        self,
        job: str | JobRef,
        outputs: list[str],
        metadata: str,
        fence: str = "",
        spent: tuple[str, GpuShare] | None = None,
    ) -> Moved:
        """A running job stored: `succeeded`, and with `spent` (its mode and its GPU share) that
        share added to its batch's and its tenant's counters in the same step, so a job is counted
        once, when it is stored, however many times it ran."""
        fields: dict[str, Any] = {
            JobField.OUTPUTS: json.dumps(outputs),
            JobField.METADATA: metadata,
            JobField.FINISHED: now(),
        }
        return self.transition(job, JobState.SUCCEEDED, (JobState.RUNNING,), fields, fence=fence, spent=spent)

    def fail(self, job: str | JobRef, code: str, message: str, fence: str = "") -> Moved:
        """Fail a queued or running job; with `fence`, only while that worker holds its live lease."""
        fields: dict[str, Any] = {
            JobField.ERROR_CODE: code,
            JobField.ERROR_MESSAGE: message[:2000],
            JobField.FINISHED: now(),
        }
        return self.transition(job, JobState.FAILED, (JobState.QUEUED, JobState.RUNNING), fields, fence=fence)

    def requeue(self, job: str | JobRef, transient: bool = False, fence: str = "") -> bool:
        """A running job back to queued; `transient` counts it as a retry (storage down)."""
        bump = JobField.RETRIES if transient else None
        return self.transition(job, JobState.QUEUED, (JobState.RUNNING,), bump=bump, fence=fence).moved

    def retry(self, job: str | JobRef, cap: int = 0) -> bool:
        """A failed job back to queued, its old error dropped in the same step.

        With `cap`, OverQuota instead once its batch's tenant has that many unfinished jobs.
        """
        drop = (JobField.ERROR_CODE, JobField.ERROR_MESSAGE, JobField.FINISHED)
        return self.transition(job, JobState.QUEUED, (JobState.FAILED,), delete=drop, cap=cap).moved

    def recover(self, job: str | JobRef, max_attempts: int) -> Recovery:
        """A running job whose worker died: back to queued, or failed and a dead letter, in one step."""
        ref = as_ref(job)
        if ref is None:
            return Recovery(Recovered.REFUSED)
        err = AttemptsExhausted("its worker died during %d attempts; not retried again")
        args: list[Any] = [
            now(),
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
        return Recovery(Recovered(outcome.decode()), finished == 1)

    def cancel(self, job: str | JobRef) -> Moved:
        ref = as_ref(job)
        if ref is None:
            return Moved(False, None)
        [moved] = self._cancel_pipelined([ref])
        return moved

    def cancel_many(self, jobs: Iterable[str | JobRef]) -> CanceledJobs:
        """Cancel queued or running jobs, one pipelined round trip per SCAN_CHUNK; how many moved."""
        count = 0
        done: dict[str, None] = {}  # the batches these cancels finished, in order
        batch: list[JobRef] = []

        def cancel_chunk() -> None:
            nonlocal count
            for ref, moved in zip(batch, self._cancel_pipelined(batch), strict=True):
                count += moved.moved
                if moved.batch_done:
                    done[ref.batch_id] = None
            batch.clear()

        for job in jobs:
            ref = as_ref(job)
            if ref is not None:
                batch.append(ref)
            if len(batch) >= SCAN_CHUNK:
                cancel_chunk()
        if batch:
            cancel_chunk()
        return CanceledJobs(count, tuple(done))

    def _cancel_pipelined(self, refs: list[JobRef]) -> list[Moved]:
        pipe = self.redis.pipeline(transaction=False)
        allowed = (JobState.QUEUED, JobState.RUNNING)
        for ref in refs:
            keys, args = self._transition_call(
                ref, JobState.CANCELED, allowed, {JobField.FINISHED: now()}, None, (), ""
            )
            self._transition(keys=keys, args=args, client=pipe)
        return [self._moved(reply) for reply in pipe.execute()]

    def progress(self, job: str | JobRef, step: int, total: int) -> None:
        self.progress_many([job], step, total)

    def progress_many(self, jobs: Sequence[str | JobRef], step: int, total: int) -> None:
        """The step a micro-batch's jobs reached, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.hset(self.keys.job(job), mapping={JobField.STEP: step, JobField.TOTAL_STEPS: total})
        pipe.execute()
