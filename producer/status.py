"""Job and batch status in Redis, changed only by atomic Lua transitions.

A batch hash holds one counter per state; every job transition moves one unit
between two counters in the same script that changes the job, so the counters
always equal the sum of the jobs' states and `status BATCH` is one read.
A job that no worker has received yet is a 9-byte record (producer/records.py),
not a hash: that keeps a queued prompt cheap in Redis memory and in submit time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import redis

from producer import records, scripts
from producer.errors import NotFound
from producer.keys import Keys, job_id, split_job_id
from producer.schema import (
    TERMINAL_STATES,
    BatchStatus,
    JobError,
    JobState,
    JobStatus,
    Priority,
    Progress,
)

SCAN_CHUNK = 512  # job hashes read per pipelined round trip
SHARDS_PER_READ = 16  # record strings read per round trip (at most ~9 MiB)


class Created(IntEnum):
    NEW = 0
    EXISTS = 1
    GONE = 2  # finished and expired: only its record is left, it is not run again


@dataclass(frozen=True)
class Chunk:
    """Jobs to record, and the message that carries them (pushed onto `lists[0]`)."""

    batch_id: str
    jobs: Sequence[tuple[int, int]]  # (index, seed), ascending, all in one record shard
    priority: Priority
    envelope: str = ""  # nothing is pushed when empty
    lists: Sequence[str] = ()  # the queue's lists: `Pushed.queue_length` sums them


@dataclass(frozen=True)
class Pushed:
    """What `StatusStore.submit` did with one chunk."""

    sent: bool  # every job was new: recorded, and the message pushed
    created: list[Created]  # per job (all NEW when sent)
    queue_length: int  # messages waiting on the queue's lists after the push


class StatusStore:
    """Reads and changes job/batch status. Shared by the producer and the worker."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s
        # Called with the batch id by whichever transition finishes a batch (writes its manifest).
        self.on_batch_done: Callable[[str], None] | None = None
        self._submit = client.register_script(scripts.lua(scripts.SUBMIT))
        self._receive = client.register_script(scripts.lua(scripts.RECEIVE))
        self._transition = client.register_script(scripts.lua(scripts.TRANSITION))

    def _record_key(self, batch_id: str, index: int) -> str:
        return self.keys.records(batch_id, records.shard_of(index))

    # -- producer side ---------------------------------------------------------------

    def submit(self, chunks: Sequence[Chunk]) -> list[Pushed]:
        """Record each chunk's jobs as queued and push its message, atomically per chunk.

        A chunk goes only if every job in it is new; otherwise it changes nothing and its
        `created` says which are new, so the caller can send those in a message of their own.
        All chunks go in one pipelined round trip.
        """
        pipe = self.redis.pipeline(transaction=False)
        for chunk in chunks:
            jobs = chunk.jobs
            indices = [index for index, _ in jobs]
            if indices != sorted(set(indices)) or records.shard_of(indices[0]) != records.shard_of(
                indices[-1]
            ):
                raise ValueError("a chunk's indices must be distinct, ascending and in one shard")
            keys = [
                self.keys.batch(chunk.batch_id),
                self._record_key(chunk.batch_id, jobs[0][0]),
                *chunk.lists,
            ]
            flags = records.EXISTS | (records.LOW if chunk.priority is Priority.LOW else 0)
            packed = b"".join(i.to_bytes(4, "big") + seed.to_bytes(4, "big") for i, seed in jobs)
            args: list[Any] = [
                _now(),
                int(time.time()),
                self.keys.records_prefix(chunk.batch_id),
                flags,
                packed,
                chunk.envelope,
            ]
            self._submit(keys=keys, args=args, client=pipe)
        pushed = []
        for chunk, (sent, found, length) in zip(chunks, pipe.execute(), strict=True):
            if sent:
                pushed.append(Pushed(True, [Created.NEW] * len(chunk.jobs), int(length)))
            else:
                decoded = [records.decode(found, n * records.RECORD_BYTES) for n in range(len(chunk.jobs))]
                pushed.append(
                    Pushed(False, [Created.NEW if r is None else Created.EXISTS for r in decoded], 0)
                )
        return pushed

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

    # -- worker side -----------------------------------------------------------------

    def receive(
        self, batch_id: str, jobs: Sequence[tuple[int, int]], priority: Priority = Priority.NORMAL
    ) -> list[tuple[Created, int]]:
        """A worker read these `(index, seed)` jobs from a message: give each its hash.

        Jobs the producer never recorded (open-format messages) are created here. Per job:
        NEW, EXISTS or GONE (finished and expired), and its stored seed.
        """
        if not jobs:
            return []
        keys = [self.keys.batch(batch_id)]
        args: list[Any] = [
            _now(),
            int(time.time()),
            self.keys.records_prefix(batch_id),
            int(priority is Priority.LOW),
        ]
        for index, seed in jobs:
            keys += [self.keys.job(job_id(batch_id, index)), self._record_key(batch_id, index)]
            args += [index, seed]
        return [(Created(int(flag)), int(seed)) for flag, seed in self._receive(keys=keys, args=args)]

    # -- read ------------------------------------------------------------------------

    def job(self, job: str) -> JobStatus:
        parts = split_job_id(job)
        if parts is not None:
            raw, record = self._with_record(job, parts, lambda pipe, key: pipe.hgetall(key))
            if raw:
                return job_status_from_hash(job, parts[0], raw)
            if record is not None and record.unreceived:
                return job_status_from_record(job, parts[0], record)
        raise NotFound(f"job {job!r} not found")

    def state(self, job: str) -> JobState | None:
        parts = split_job_id(job)
        if parts is None:
            return None
        raw, record = self._with_record(job, parts, lambda pipe, key: pipe.hget(key, "st"))
        if raw:
            return JobState(raw.decode())
        return JobState.QUEUED if record is not None and record.unreceived else None

    def _with_record(
        self, job: str, parts: tuple[str, int], read: Callable[[Any, str], Any]
    ) -> tuple[Any, records.Record | None]:
        """A read of the job's hash and its record, in one round trip."""
        batch_id, index = parts
        start = records.byte_offset(index)
        pipe = self.redis.pipeline(transaction=False)
        read(pipe, self.keys.job(job))
        pipe.getrange(self._record_key(batch_id, index), start, start + records.RECORD_BYTES - 1)
        raw, packed = pipe.execute()
        return raw, records.decode(packed)

    def is_terminal(self, job: str) -> bool:
        return self.state(job) in TERMINAL_STATES

    def batch(self, batch_id: str) -> BatchStatus:
        raw: dict[bytes, bytes] = self.redis.hgetall(self.keys.batch(batch_id))  # type: ignore[assignment]
        if not raw or b"total" not in raw:
            raise NotFound(f"batch {batch_id!r} not found")
        text = {k.decode(): v.decode() for k, v in raw.items()}
        return BatchStatus(
            batch_id=batch_id,
            total=int(text["total"]),
            counts={s: int(text.get(s.value, 0)) for s in JobState},
            created_at=_float(text.get("ct")),
            finished_at=_float(text.get("ft")),
            manifest=text.get("mf"),
        )

    def _chunks(
        self, batch_id: str, read: Callable[[Any, str], Any]
    ) -> Iterator[tuple[str, Any, records.Record]]:
        """`(job id, hash reply or None, record)` for every job of a batch, in index order.

        The batch's record strings say which indices are jobs, so a sparse batch costs nothing for
        its gaps; only received jobs have a hash to read, SCAN_CHUNK per pipelined round trip.
        """
        self.batch(batch_id)  # NotFound, never an empty answer, for an unknown batch
        span = int(self.redis.hget(self.keys.batch(batch_id), "span") or 0)
        shards = range(records.shard_of(span - 1) + 1 if span else 0)
        for first in range(0, len(shards), SHARDS_PER_READ):
            group = shards[first : first + SHARDS_PER_READ]
            pipe = self.redis.pipeline(transaction=False)
            for shard in group:
                pipe.get(self.keys.records(batch_id, shard))
            for shard, packed in zip(group, pipe.execute(), strict=True):
                found = records.decode_all(packed or b"", shard * records.SHARD_JOBS)
                for start in range(0, len(found), SCAN_CHUNK):
                    yield from self._with_hashes(batch_id, found[start : start + SCAN_CHUNK], read)

    def _with_hashes(
        self, batch_id: str, found: list[tuple[int, records.Record]], read: Callable[[Any, str], Any]
    ) -> Iterator[tuple[str, Any, records.Record]]:
        received = [index for index, record in found if not record.unreceived]
        pipe = self.redis.pipeline(transaction=False)
        for index in received:
            read(pipe, self.keys.job(job_id(batch_id, index)))
        replies = dict(zip(received, pipe.execute() if received else [], strict=True))
        for index, record in found:
            yield job_id(batch_id, index), replies.get(index), record

    def jobs(self, batch_id: str) -> Iterator[JobStatus]:
        """Every job of a batch in index order (expired or never-used indices left out)."""
        for job, raw, record in self._chunks(batch_id, lambda pipe, key: pipe.hgetall(key)):
            if raw:
                yield job_status_from_hash(job, batch_id, raw)
            elif record.unreceived:
                yield job_status_from_record(job, batch_id, record)

    def job_states(self, batch_id: str) -> Iterator[tuple[str, JobState]]:
        """`(job id, state)` for every job of a batch, cheaper than `jobs`."""
        for job, raw, record in self._chunks(batch_id, lambda pipe, key: pipe.hget(key, "st")):
            if raw:
                yield job, JobState(raw.decode())
            elif record.unreceived:
                yield job, JobState.QUEUED

    def set_manifest(self, batch_id: str, uri: str) -> None:
        self.redis.hset(self.keys.batch(batch_id), "mf", uri)

    # -- transitions -----------------------------------------------------------------

    def _transition_call(
        self,
        job: str,
        parts: tuple[str, int],
        to: JobState,
        allowed_from: Iterable[JobState],
        fields: dict[str, Any] | None,
        bump_attempts: bool,
        delete: Sequence[str],
    ) -> tuple[list[str], list[Any]]:
        batch_id, index = parts
        args: list[Any] = [
            to.value,
            ",".join(s.value for s in allowed_from),
            _now(),
            self.ttl_s,
            "1" if bump_attempts else "0",
            job,
            index,
            self.keys.records_prefix(batch_id),
            len(delete),
            *delete,
        ]
        for name, value in (fields or {}).items():
            args += [name, value]
        keys = [
            self.keys.job(job),
            self.keys.batch(batch_id),
            self.keys.events(),
            self.keys.leases(),
            self.keys.owners(),
            self._record_key(batch_id, index),
        ]
        return keys, args

    def _outcome(self, batch_id: str, reply: list[Any]) -> tuple[bool, JobState | None]:
        outcome, state, *finished = reply
        if outcome == b"missing":
            return False, None
        if finished and finished[0] == 1 and self.on_batch_done is not None:
            self.on_batch_done(batch_id)
        return outcome == b"ok", JobState(state.decode())

    def transition(
        self,
        job: str,
        to: JobState,
        allowed_from: Iterable[JobState],
        fields: dict[str, Any] | None = None,
        bump_attempts: bool = False,
        delete: Sequence[str] = (),
    ) -> tuple[bool, JobState | None]:
        """Move a job to `to` if it is in one of `allowed_from`, set `fields`, drop `delete`.

        Returns (moved, state before the call); state is None for an unknown job.
        """
        parts = split_job_id(job)
        if parts is None:
            return False, None
        keys, args = self._transition_call(job, parts, to, allowed_from, fields, bump_attempts, delete)
        return self._outcome(parts[0], self._transition(keys=keys, args=args))

    def start(
        self, job: str, worker: str, total_steps: int, spec: dict[str, Any]
    ) -> tuple[bool, JobState | None]:
        """Claim a queued job (or one redelivered while marked running) for `worker`.

        The spec (wire form) is kept with the job from here on, for manifests and retries.
        """
        fields = {"w": worker, "t0": _now(), "ps": 0, "pt": total_steps, "sp": json.dumps(spec)}
        return self.transition(
            job, JobState.RUNNING, (JobState.QUEUED, JobState.RUNNING), fields, bump_attempts=True
        )

    def succeed(self, job: str, outputs: list[str], metadata: str) -> bool:
        fields = {"o": json.dumps(outputs), "m": metadata, "t1": _now()}
        moved, _ = self.transition(job, JobState.SUCCEEDED, (JobState.RUNNING,), fields)
        return moved

    def fail(self, job: str, code: str, message: str) -> bool:
        fields = {"ec": code, "em": message[:2000], "t1": _now()}
        allowed = (JobState.QUEUED, JobState.RUNNING)
        moved, _ = self.transition(job, JobState.FAILED, allowed, fields)
        return moved

    def requeue(self, job: str) -> bool:
        moved, _ = self.transition(job, JobState.QUEUED, (JobState.RUNNING,))
        return moved

    def retry(self, job: str) -> bool:
        """A failed job back to queued, its old error dropped in the same step."""
        moved, _ = self.transition(job, JobState.QUEUED, (JobState.FAILED,), delete=("ec", "em", "t1"))
        return moved

    def cancel(self, job: str) -> bool:
        return self.cancel_many([job]) == 1

    def cancel_many(self, jobs: Iterable[str]) -> int:
        """Cancel queued or running jobs, one pipelined round trip per SCAN_CHUNK; how many moved."""
        moved = 0
        batch: list[tuple[str, tuple[str, int]]] = []
        for job in jobs:
            parts = split_job_id(job)
            if parts is not None:
                batch.append((job, parts))
            if len(batch) >= SCAN_CHUNK:
                moved += self._cancel_pipelined(batch)
                batch = []
        return moved + (self._cancel_pipelined(batch) if batch else 0)

    def _cancel_pipelined(self, jobs: list[tuple[str, tuple[str, int]]]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        allowed = (JobState.QUEUED, JobState.RUNNING)
        for job, parts in jobs:
            keys, args = self._transition_call(
                job, parts, JobState.CANCELED, allowed, {"t1": _now()}, False, ()
            )
            self._transition(keys=keys, args=args, client=pipe)
        replies = pipe.execute()
        return sum(self._outcome(parts[0], reply)[0] for (_, parts), reply in zip(jobs, replies, strict=True))

    def progress(self, job: str, step: int, total: int) -> None:
        self.redis.hset(self.keys.job(job), mapping={"ps": step, "pt": total})


def _now() -> str:
    return f"{time.time():.3f}"


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def job_status_from_hash(job: str, batch_id: str, raw: dict[bytes, bytes]) -> JobStatus:
    f = {k.decode(): v.decode() for k, v in raw.items()}
    error = JobError(code=f["ec"], message=f.get("em", "")) if "ec" in f else None
    return JobStatus(
        job_id=job,
        batch_id=batch_id,
        state=JobState(f["st"]),
        attempts=int(f.get("a", 0)),
        seed=int(f["sd"]) if f.get("sd") else None,
        created_at=_float(f.get("ct")),
        started_at=_float(f.get("t0")),
        finished_at=_float(f.get("t1")),
        progress=Progress(step=int(f.get("ps", 0)), total=int(f.get("pt", 0))),
        worker=f.get("w"),
        outputs=json.loads(f["o"]) if "o" in f else [],
        metadata=f.get("m"),
        error=error,
        spec=json.loads(f["sp"]) if "sp" in f else None,
        priority=Priority(f.get("pr", Priority.NORMAL.value)),
    )


def job_status_from_record(job: str, batch_id: str, record: records.Record) -> JobStatus:
    """A queued job that no worker has received yet."""
    return JobStatus(
        job_id=job,
        batch_id=batch_id,
        state=JobState.QUEUED,
        seed=record.seed,
        created_at=float(record.created),
        priority=Priority.LOW if record.flags & records.LOW else Priority.NORMAL,
    )
