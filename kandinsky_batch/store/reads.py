"""Reading status from Redis: jobs (hash or record), batches, the event stream, dead letters, workers.

Reads never change anything, so they live apart from the writes (store/status.py). A job that
no worker has received yet is a 9-byte record (store/records.py), not a hash.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis

from kandinsky_batch.errors import NotFound
from kandinsky_batch.gpu_time import spent_of
from kandinsky_batch.keys import BatchField, EventField, JobField, JobRef, Keys, QueueCount, Spent, UsageField
from kandinsky_batch.schema import (
    BatchStatus,
    JobError,
    JobState,
    JobStatus,
    Mode,
    Priority,
    Progress,
    is_finished,
)
from kandinsky_batch.store import records

SPENT_PREFIXES = tuple(p.value for p in Spent)
SCAN_CHUNK = 512  # job hashes read per pipelined round trip
SHARDS_PER_READ = 16  # record strings read per round trip (at most ~9 MiB)

Read = Callable[[Any, str], Any]  # queue one read of a job hash on a pipeline


def as_ref(job: str | JobRef) -> JobRef | None:
    return job if isinstance(job, JobRef) else JobRef.parse(job)


class StatusReader:
    """Reads of job and batch status; StatusStore adds the writes."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def _record_key(self, ref: JobRef) -> str:
        return self.keys.records(ref.batch_id, records.shard_of(ref.index))

    def job(self, job: str | JobRef) -> JobStatus:
        ref = as_ref(job)
        if ref is not None:
            raw, record = self._with_record(ref, lambda pipe, key: pipe.hgetall(key))
            if raw:
                return job_status_from_hash(ref, raw)
            if record is not None and record.unreceived:
                return job_status_from_record(ref, record)
        raise NotFound(f"job {str(job)!r} not found")

    def state(self, job: str | JobRef) -> JobState | None:
        ref = as_ref(job)
        if ref is None:
            return None
        raw, record = self._with_record(ref, lambda pipe, key: pipe.hget(key, JobField.STATE))
        if raw:
            return JobState(raw.decode())
        return JobState.QUEUED if record is not None and record.unreceived else None

    def states_of(self, refs: list[JobRef]) -> list[JobState | None]:
        """The states of received jobs (those with a hash), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for ref in refs:
            pipe.hget(self.keys.job(ref), JobField.STATE)
        return [JobState(raw.decode()) if raw else None for raw in pipe.execute()]

    def steps_of(self, jobs: Sequence[str | JobRef]) -> list[tuple[JobState | None, int, int]]:
        """Each job's (state, step, total steps), in one round trip (None for a job with no hash)."""
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.hmget(self.keys.job(job), [JobField.STATE, JobField.STEP, JobField.TOTAL_STEPS])
        return [
            (JobState(state.decode()) if state else None, int(step or 0), int(total or 0))
            for state, step, total in pipe.execute()
        ]

    def crashed(self, refs: Sequence[JobRef]) -> set[JobRef]:
        """The jobs whose worker died while running them before, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for ref in refs:
            pipe.hget(self.keys.job(ref), JobField.CRASHES)
        return {ref for ref, n in zip(refs, pipe.execute(), strict=True) if n and int(n) > 0}

    def created_and_attempts(self, refs: Sequence[JobRef]) -> list[tuple[float | None, int]]:
        """Each received job's creation time (None if unknown) and its starts so far, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for ref in refs:
            pipe.hmget(self.keys.job(ref), [JobField.CREATED, JobField.ATTEMPTS])
        return [(float(ct) if ct else None, int(attempts or 0)) for ct, attempts in pipe.execute()]

    def attempts_and_mode(self, ref: JobRef) -> tuple[int, str]:
        """A job's starts so far and the mode its stored spec names ('' before its first start)."""
        raw: Any = self.redis.hmget(self.keys.job(ref), [JobField.ATTEMPTS, JobField.SPEC])
        attempts, spec = raw
        mode = json.loads(spec).get("mode", Mode.TEXT2IMG.value) if spec else ""
        return int(attempts or 0), mode

    def unleased_running(self, started_before: float, limit: int = 100) -> list[str]:
        """Jobs running since before `started_before` (unix time) that no lease covers.

        Their worker lost them without handing them back; O(running jobs), never O(jobs).
        """
        raw: Any = self.redis.zrangebyscore(self.keys.running(), "-inf", started_before, start=0, num=limit)
        jobs = [j.decode() for j in raw]
        if not jobs:
            return []
        scores = self.redis.zmscore(self.keys.leases(), jobs)
        return [job for job, score in zip(jobs, scores, strict=True) if score is None]

    def field(self, job: str | JobRef, name: JobField) -> str | None:
        raw = self.redis.hget(self.keys.job(job), name)
        return raw.decode() if isinstance(raw, bytes) else None

    def _with_record(self, ref: JobRef, read: Read) -> tuple[Any, records.Record | None]:
        """A read of the job's hash and its record, in one round trip."""
        start = records.byte_offset(ref.index)
        pipe = self.redis.pipeline(transaction=False)
        read(pipe, self.keys.job(ref))
        pipe.getrange(self._record_key(ref), start, start + records.RECORD_BYTES - 1)
        raw, packed = pipe.execute()
        return raw, records.decode(packed)

    def is_terminal(self, job: str | JobRef) -> bool:
        state = self.state(job)
        return state is not None and is_finished(state)

    def batch(self, batch_id: str) -> BatchStatus:
        raw: dict[bytes, bytes] = self.redis.hgetall(self.keys.batch(batch_id))  # type: ignore[assignment]
        return batch_status_from_hash(batch_id, raw)

    def batch_tenant(self, batch_id: str) -> str:
        """The tenant that submitted a batch over HTTP, or '' for none (the SDK, CLI, open format)."""
        tenant = self.redis.hget(self.keys.batch(batch_id), BatchField.TENANT)
        return tenant.decode() if isinstance(tenant, bytes) else ""

    def _chunks(
        self, batch_id: str, read: Read, start: int = 0
    ) -> Iterator[tuple[JobRef, Any, records.Record]]:
        """`(ref, hash reply or None, record)` for every job of a batch from index `start`, in order.

        The batch's record strings say which indices are jobs, so a sparse batch costs nothing for
        its gaps; only received jobs have a hash to read, SCAN_CHUNK per pipelined round trip.
        """
        self.batch(batch_id)  # NotFound, never an empty answer, for an unknown batch
        span = int(self.redis.hget(self.keys.batch(batch_id), BatchField.SPAN) or 0)
        shards = range(records.shard_of(start), records.shard_of(span - 1) + 1 if span else 0)
        for first in range(0, len(shards), SHARDS_PER_READ):
            group = shards[first : first + SHARDS_PER_READ]
            pipe = self.redis.pipeline(transaction=False)
            for shard in group:
                pipe.get(self.keys.records(batch_id, shard))
            for shard, packed in zip(group, pipe.execute(), strict=True):
                found = records.decode_all(packed or b"", shard * records.SHARD_JOBS)
                found = [(index, record) for index, record in found if index >= start]
                for at in range(0, len(found), SCAN_CHUNK):
                    yield from self._with_hashes(batch_id, found[at : at + SCAN_CHUNK], read)

    def _with_hashes(
        self, batch_id: str, found: list[tuple[int, records.Record]], read: Read
    ) -> Iterator[tuple[JobRef, Any, records.Record]]:
        received = [JobRef(batch_id, index) for index, record in found if not record.unreceived]
        pipe = self.redis.pipeline(transaction=False)
        for ref in received:
            read(pipe, self.keys.job(ref))
        replies = dict(zip(received, pipe.execute() if received else [], strict=True))
        for index, record in found:
            ref = JobRef(batch_id, index)
            yield ref, replies.get(ref), record

    def jobs(self, batch_id: str, start: int = 0) -> Iterator[JobStatus]:
        """Every job of a batch from index `start`, in index order (expired or unused indices left out)."""
        for ref, raw, record in self._chunks(batch_id, lambda pipe, key: pipe.hgetall(key), start):
            if raw:
                yield job_status_from_hash(ref, raw)
            elif record.unreceived:
                yield job_status_from_record(ref, record)

    def job_states(self, batch_id: str) -> Iterator[tuple[JobRef, JobState]]:
        """`(ref, state)` for every job of a batch, cheaper than `jobs`."""
        for ref, raw, record in self._chunks(batch_id, lambda pipe, key: pipe.hget(key, JobField.STATE)):
            if raw:
                yield ref, JobState(raw.decode())
            elif record.unreceived:
                yield ref, JobState.QUEUED

    def outputs_of(self, jobs: list[str]) -> list[list[str]]:
        """Each job's output URIs, in one round trip (empty for a job with none)."""
        pipe = self.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.hget(self.keys.job(job), JobField.OUTPUTS)
        return [json.loads(raw) if raw else [] for raw in pipe.execute()]

    # -- the event stream, dead letters, workers --------------------------------------

    def last_event_id(self) -> bytes | str:
        last: Any = self.redis.xrevrange(self.keys.events(), count=1)
        return last[0][0] if last else "0-0"

    def events_after(self, last_id: bytes | str, count: int) -> list[tuple[bytes, str, JobState]]:
        """Up to `count` status changes after `last_id`: (entry id, job id, new state)."""
        return events_from_reply(self.redis.xread({self.keys.events(): last_id}, count=count))

    def taken(self) -> int:
        """Jobs ever taken off the queues (every priority): its rate is how fast they drain."""
        fields = [QueueCount.TAKEN.of(p) for p in Priority]
        raw: Any = self.redis.hmget(self.keys.queue_counts(), fields)
        return sum(int(v or 0) for v in raw)

    def queue_position(self, ref: JobRef, priority: Priority) -> int | None:
        """About how many jobs a worker takes before this queued one; None if it cannot be told.

        Read as if each priority's queue were first in, first out: the jobs ahead are this job's
        submit sequence (its batch's first sequence plus its index) less the jobs of its priority
        taken so far, plus every waiting job of a higher priority. The fair share between tenants,
        re-sent jobs (retries, hand-backs) and several queues (modes) make it an estimate; it
        costs two reads whatever the queue's length.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.keys.batch(ref.batch_id), BatchField.SEQUENCE)
        pipe.hmget(self.keys.queue_counts(), [count.of(p) for p in Priority for count in QueueCount])
        first, raw = pipe.execute()
        if first is None:
            return None
        counts = [int(v or 0) for v in raw]
        pushed_taken = {p: (counts[2 * n], counts[2 * n + 1]) for n, p in enumerate(Priority)}
        pushed, taken = pushed_taken[priority]
        ahead = min(max(0, int(first) + ref.index - taken), max(0, pushed - taken - 1))
        above = list(Priority)[: list(Priority).index(priority)]
        return ahead + sum(max(0, pushed_taken[p][0] - pushed_taken[p][1]) for p in above)

    def usage(self, tenant: str) -> dict[str, Any]:
        """A tenant's jobs by state, its images submitted and succeeded, and what its succeeded
        jobs spent generating (`gpu_seconds`, `cost`, `by_mode`)."""
        raw: Any = self.redis.hgetall(self.keys.usage(tenant))
        text = {k.decode(): v.decode() for k, v in raw.items()}
        counts = {k: int(v) for k, v in text.items() if not k.startswith(SPENT_PREFIXES)}
        zero = {**{s.value: 0 for s in JobState}, **{f.value: 0 for f in UsageField}}
        return {**zero, **counts, **spent_of(text)}

    def tenants_with_usage(self) -> list[str]:
        """Every tenant that has submitted (a set the submit script keeps), in O(tenants)."""
        raw: Any = self.redis.smembers(self.keys.tenants())
        return sorted(t.decode() for t in raw)

    def dead_letters(self, limit: int) -> list[str]:
        """Ids of jobs that failed as attempts_exhausted, newest first."""
        raw: Any = self.redis.lrange(self.keys.dead_letters(), 0, max(0, limit - 1))
        return [j.decode() for j in raw]

    def live_workers(self) -> dict[str, dict[str, Any]]:
        """Every worker whose heartbeat has not expired: name -> what it said, in O(workers)."""
        names = [n.decode() for n in self.redis.zrange(self.keys.workers(), 0, -1)]  # type: ignore[union-attr]
        if not names:
            return {}
        raw: Any = self.redis.mget([self.keys.worker(n) for n in names])
        found = {}
        for name, text in zip(names, raw, strict=True):
            try:
                info = json.loads(text) if text else None
            except ValueError:
                info = None
            if isinstance(info, dict):
                found[name] = info
        return found

    def worker_info(self, name: str) -> dict[str, Any] | None:
        """What a worker's last heartbeat said, or None once it has expired."""
        raw: Any = self.redis.get(self.keys.worker(name))
        return json.loads(raw) if raw else None


def _float(value: str | None) -> float | None:
    return float(value) if value else None


def batch_status_from_hash(batch_id: str, raw: dict[bytes, bytes]) -> BatchStatus:
    """A batch from its hash as HGETALL gives it; NotFound for none (shared with the asyncio reads)."""
    if not raw or BatchField.TOTAL.encode() not in raw:
        raise NotFound(f"batch {batch_id!r} not found")
    text = {k.decode(): v.decode() for k, v in raw.items()}
    return BatchStatus(
        batch_id=batch_id,
        total=int(text[BatchField.TOTAL]),
        counts={s: int(text.get(s.value, 0)) for s in JobState},
        created_at=_float(text.get(BatchField.CREATED)),
        finished_at=_float(text.get(BatchField.FINISHED)),
        manifest=text.get(BatchField.MANIFEST),
        tenant=text.get(BatchField.TENANT),
        **spent_of(text),
    )


def events_from_reply(answer: Any) -> list[tuple[bytes, str, JobState]]:
    """(entry id, job id, new state) of each status change in an XREAD reply of the event stream."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = answer[0][1] if answer else []
    job, state = EventField.JOB.encode(), EventField.STATE.encode()
    return [(eid, f[job].decode(), JobState(f[state].decode())) for eid, f in entries]


def job_status_from_hash(ref: JobRef, raw: dict[bytes, bytes]) -> JobStatus:
    f = {k.decode(): v.decode() for k, v in raw.items()}
    error = None
    if JobField.ERROR_CODE in f:
        error = JobError(code=f[JobField.ERROR_CODE], message=f.get(JobField.ERROR_MESSAGE, ""))
    return JobStatus(
        job_id=ref.id,
        batch_id=ref.batch_id,
        state=JobState(f[JobField.STATE]),
        attempts=int(f.get(JobField.ATTEMPTS, 0)),
        seed=int(f[JobField.SEED]) if f.get(JobField.SEED) else None,
        created_at=_float(f.get(JobField.CREATED)),
        started_at=_float(f.get(JobField.STARTED)),
        finished_at=_float(f.get(JobField.FINISHED)),
        progress=Progress(step=int(f.get(JobField.STEP, 0)), total=int(f.get(JobField.TOTAL_STEPS, 0))),
        worker=f.get(JobField.WORKER),
        outputs=json.loads(f[JobField.OUTPUTS]) if JobField.OUTPUTS in f else [],
        metadata=f.get(JobField.METADATA),
        error=error,
        spec=json.loads(f[JobField.SPEC]) if JobField.SPEC in f else None,
        priority=Priority(f.get(JobField.PRIORITY, Priority.NORMAL.value)),
    )


def job_status_from_record(ref: JobRef, record: records.Record) -> JobStatus:
    """A queued job that no worker has received yet."""
    return JobStatus(
        job_id=ref.id,
        batch_id=ref.batch_id,
        state=JobState.QUEUED,
        seed=record.seed,
        created_at=float(record.created),
        priority=records.priority_of(record.flags),
    )
