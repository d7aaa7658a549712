"""Job and batch status in Redis, changed only by atomic Lua transitions.

A batch hash holds one counter per state; every job transition moves one unit
between two counters in the same script that changes the job, so the counters
always equal the sum of the jobs' states and `status BATCH` is one read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from enum import IntEnum
from typing import Any

import redis

from producer.errors import NotFound
from producer.keys import Keys, job_id, split_job_id
from producer.schema import TERMINAL_STATES, BatchStatus, JobError, JobState, JobStatus, Progress

# KEYS: batch, job_1..job_n   ARGV: now, index_1, seed_1, ..., index_n, seed_n
# Creates each missing job as queued; existing jobs are left alone (idempotent
# resubmit). Returns per job {flag, seed}: 0 = created now, 1 = exists but its
# message was never confirmed sent, 2 = exists and was sent; seed is the stored one.
_SUBMIT = """
local now = ARGV[1]
local out = {}
local fresh = 0
local span = tonumber(redis.call('HGET', KEYS[1], 'span') or '0')
for i = 2, #KEYS do
  local index = tonumber(ARGV[2 * i - 2])
  local seed = ARGV[2 * i - 1]
  local have = redis.call('HMGET', KEYS[i], 'st', 'sd', 'snt')
  if not have[1] then
    redis.call('HSET', KEYS[i], 'st', 'queued', 'sd', seed, 'ct', now)
    fresh = fresh + 1
    out[i - 1] = {0, seed}
  elseif have[1] == 'queued' and not have[3] then
    out[i - 1] = {1, have[2]}
  else
    out[i - 1] = {2, have[2]}
  end
  if index + 1 > span then span = index + 1 end
end
if fresh > 0 then
  redis.call('HINCRBY', KEYS[1], 'total', fresh)
  redis.call('HINCRBY', KEYS[1], 'queued', fresh)
end
redis.call('HSET', KEYS[1], 'span', span)
redis.call('HSETNX', KEYS[1], 'ct', now)
if fresh > 0 and redis.call('HEXISTS', KEYS[1], 'ft') == 1 then
  redis.call('HDEL', KEYS[1], 'ft')
  redis.call('PERSIST', KEYS[1])
end
return out
"""

# KEYS: job, batch, events, leases, owners
# ARGV: to, from_csv, now, ttl, bump_attempts, job_id, field, value, field, value...
# Returns {'ok', previous, finished} | {'refused', current} | {'missing', ''}; finished is 1 when
# this transition completed the batch. Any state but `running` drops the job's lease.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'st')
if not cur then return {'missing', ''} end
local allowed = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then allowed = true end end
if not allowed then return {'refused', cur} end
local to = ARGV[1]
local finished = 0
redis.call('HSET', KEYS[1], 'st', to)
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[1], 'a', 1) end
if cur ~= to then
  redis.call('HINCRBY', KEYS[2], cur, -1)
  redis.call('HINCRBY', KEYS[2], to, 1)
end
local ttl = tonumber(ARGV[4])
if to == 'succeeded' or to == 'failed' or to == 'canceled' then
  redis.call('EXPIRE', KEYS[1], ttl)
  local b = redis.call('HMGET', KEYS[2], 'total', 'succeeded', 'failed', 'canceled', 'ft')
  local done = (tonumber(b[2]) or 0) + (tonumber(b[3]) or 0) + (tonumber(b[4]) or 0)
  if not b[5] and done == (tonumber(b[1]) or -1) then
    redis.call('HSET', KEYS[2], 'ft', ARGV[3])
    redis.call('EXPIRE', KEYS[2], ttl)
    finished = 1
  end
elseif to == 'queued' or to == 'running' then
  redis.call('PERSIST', KEYS[1])
  if redis.call('HEXISTS', KEYS[2], 'ft') == 1 then
    redis.call('HDEL', KEYS[2], 'ft')
    redis.call('PERSIST', KEYS[2])
  end
end
if to ~= 'running' then
  redis.call('ZREM', KEYS[4], ARGV[6])
  redis.call('HDEL', KEYS[5], ARGV[6])
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', '100000', '*', 'job', ARGV[6], 'state', to)
return {'ok', cur, finished}
"""


SCAN_CHUNK = 500  # jobs read per pipelined round trip


class Created(IntEnum):
    NEW = 0
    UNSENT = 1
    SENT = 2


class StatusStore:
    """Reads and changes job/batch status. Shared by the producer and the worker."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: int) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s
        # Called with the batch id by whichever transition finishes a batch (writes its manifest).
        self.on_batch_done: Callable[[str], None] | None = None
        self._submit = client.register_script(_SUBMIT)
        self._transition = client.register_script(_TRANSITION)

    # -- producer side ---------------------------------------------------------------

    def create_jobs(self, batch_id: str, jobs: Sequence[tuple[int, int]]) -> list[tuple[Created, int]]:
        """Record `(index, seed)` jobs as queued; per job, whether it is new and its stored seed."""
        if not jobs:
            return []
        keys = [self.keys.batch(batch_id)] + [self.keys.job(job_id(batch_id, i)) for i, _ in jobs]
        args: list[Any] = [_now()]
        for index, seed in jobs:
            args += [index, seed]
        return [(Created(int(flag)), int(seed)) for flag, seed in self._submit(keys=keys, args=args)]

    def mark_sent(self, batch_id: str, indices: Iterable[int]) -> None:
        """Note that these jobs' message is on the queue, so a resubmit will not send it again."""
        pipe = self.redis.pipeline(transaction=False)
        for index in indices:
            pipe.hset(self.keys.job(job_id(batch_id, index)), "snt", 1)
        pipe.execute()

    def job(self, job: str) -> JobStatus:
        parts = split_job_id(job)
        raw: dict[bytes, bytes] = self.redis.hgetall(self.keys.job(job)) if parts else {}  # type: ignore[assignment]
        if not parts or not raw:
            raise NotFound(f"job {job!r} not found")
        return job_status_from_hash(job, parts[0], raw)

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

    def _chunks(self, batch_id: str, read: Callable[[Any, str], Any]) -> Iterator[tuple[str, Any]]:
        """`(job id, reply)` for every index of a batch: one pipelined round trip per chunk.

        Job ids derive from the batch's index span, so no list of jobs is stored per batch.
        """
        self.batch(batch_id)  # NotFound, never an empty answer, for an unknown batch
        span = int(self.redis.hget(self.keys.batch(batch_id), "span") or 0)
        for start in range(0, span, SCAN_CHUNK):
            ids = [job_id(batch_id, i) for i in range(start, min(span, start + SCAN_CHUNK))]
            pipe = self.redis.pipeline(transaction=False)
            for job in ids:
                read(pipe, self.keys.job(job))
            yield from zip(ids, pipe.execute(), strict=True)

    def jobs(self, batch_id: str) -> Iterator[JobStatus]:
        """Every job of a batch in index order (expired or never-used indices left out)."""
        for job, raw in self._chunks(batch_id, lambda pipe, key: pipe.hgetall(key)):
            if raw:
                yield job_status_from_hash(job, batch_id, raw)

    def job_states(self, batch_id: str) -> Iterator[tuple[str, JobState]]:
        """`(job id, state)` for every job of a batch, cheaper than `jobs`."""
        for job, raw in self._chunks(batch_id, lambda pipe, key: pipe.hget(key, "st")):
            if raw:
                yield job, JobState(raw.decode())

    def set_manifest(self, batch_id: str, uri: str) -> None:
        self.redis.hset(self.keys.batch(batch_id), "mf", uri)

    # -- transitions -----------------------------------------------------------------

    def transition(
        self,
        job: str,
        to: JobState,
        allowed_from: Iterable[JobState],
        fields: dict[str, Any] | None = None,
        bump_attempts: bool = False,
    ) -> tuple[bool, JobState | None]:
        """Move a job to `to` if it is in one of `allowed_from`.

        Returns (moved, state before the call); state is None for an unknown job.
        """
        parts = split_job_id(job)
        if parts is None:
            return False, None
        args: list[Any] = [
            to.value,
            ",".join(s.value for s in allowed_from),
            _now(),
            self.ttl_s,
            "1" if bump_attempts else "0",
            job,
        ]
        for name, value in (fields or {}).items():
            args += [name, value]
        keys = [
            self.keys.job(job),
            self.keys.batch(parts[0]),
            self.keys.events(),
            self.keys.leases(),
            self.keys.owners(),
        ]
        outcome, state, *finished = self._transition(keys=keys, args=args)
        if outcome == b"missing":
            return False, None
        if finished and finished[0] == 1 and self.on_batch_done is not None:
            self.on_batch_done(parts[0])
        return outcome == b"ok", JobState(state.decode())

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

    def cancel(self, job: str) -> bool:
        moved, _ = self.transition(
            job, JobState.CANCELED, (JobState.QUEUED, JobState.RUNNING), {"t1": _now()}
        )
        return moved

    def progress(self, job: str, step: int, total: int) -> None:
        self.redis.hset(self.keys.job(job), mapping={"ps": step, "pt": total})

    def state(self, job: str) -> JobState | None:
        raw: bytes | None = self.redis.hget(self.keys.job(job), "st")  # type: ignore[assignment]
        return JobState(raw.decode()) if raw else None

    def is_terminal(self, job: str) -> bool:
        return self.state(job) in TERMINAL_STATES


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
    )
