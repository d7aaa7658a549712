"""Leases: which worker holds which job, kept alive by heartbeats.

A sorted set maps job -> lease expiry and a hash maps job -> worker. A worker
leases every job of a message before running it; a second delivery while the
lease is alive is skipped; an expired lease means its worker died (or was paused
past its TTL), and the reaper hands the job back. An expired lease is never renewed,
and a worker writes only while it holds a job's live lease (`held`), so a worker that
lost a lease writes nothing more for that job. Status transitions away from `running`
drop the lease. The scripts are the store's (kandinsky_batch/store/lua/lease_*.lua).
`Fence` is that check as the engine, its step check and its storing use it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import redis

from kandinsky_batch.errors import LeaseLost
from kandinsky_batch.keys import Keys
from kandinsky_batch.store import scripts


class Lease(StrEnum):
    MINE = "mine"
    HELD = "held"
    STALE = "stale"


class LeaseStore:
    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: float) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._acquire = client.register_script(scripts.lua("lease_acquire"))
        self._renew = client.register_script(scripts.lua("lease_renew"))
        self._release = client.register_script(scripts.lua("lease_release"))
        self._take = client.register_script(scripts.lua("lease_take_expired"))
        self._take_orphan = client.register_script(scripts.lua("lease_take_orphan"))

    def _expiry(self) -> float:
        return time.time() + self.ttl_s

    def acquire(self, worker: str, jobs: Sequence[tuple[str, dict[str, Any]]]) -> list[Lease]:
        """Lease `(job_id, wire spec)` jobs for `worker`; the spec is stored for redelivery."""
        if not jobs:
            return []
        keys = [self.keys.leases(), self.keys.owners(), *[self.keys.job(j) for j, _ in jobs]]
        args: list[Any] = [time.time(), self._expiry(), worker, *[json.dumps(spec) for _, spec in jobs]]
        return [Lease(r.decode()) for r in self._acquire(keys=keys, args=args)]

    def renew(self, worker: str, jobs: Sequence[str]) -> tuple[int, int]:
        """Extend `worker`'s live leases of `jobs`: (renewed, lost to expiry or another worker)."""
        if not jobs:
            return 0, 0
        keys = [self.keys.leases(), self.keys.owners()]
        renewed, lost = self._renew(keys=keys, args=[time.time(), self._expiry(), worker, *jobs])
        return int(renewed), int(lost)

    def held(self, worker: str, jobs: Sequence[str]) -> set[str]:
        """Which of `jobs` `worker` holds a live lease on now (the fence before any write)."""
        if not jobs:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(self.keys.owners(), list(jobs))
        pipe.zmscore(self.keys.leases(), list(jobs))
        owners, scores = pipe.execute()
        now, me = time.time(), worker.encode()
        return {
            job
            for job, owner, score in zip(jobs, owners, scores, strict=True)
            if owner == me and score is not None and score > now
        }

    def release(self, worker: str, jobs: Sequence[str]) -> int:
        if not jobs:
            return 0
        return int(self._release(keys=[self.keys.leases(), self.keys.owners()], args=[worker, *jobs]))

    def expired(self, limit: int = 100) -> list[str]:
        """Jobs whose lease ran out: their worker stopped renewing it."""
        raw = self.redis.zrangebyscore(self.keys.leases(), "-inf", time.time(), start=0, num=limit)
        return [j.decode() for j in raw]  # type: ignore[union-attr]

    def take_expired(self, reaper: str, job: str) -> bool:
        """Atomically take over one expired lease, so exactly one reaper handles the job."""
        keys = [self.keys.leases(), self.keys.owners()]
        return bool(self._take(keys=keys, args=[time.time(), self._expiry(), reaper, job]))

    def take_orphan(self, reaper: str, job: str) -> bool:
        """Lease a job that has no lease at all to the reaper (a running job its worker let go)."""
        keys = [self.keys.leases(), self.keys.owners()]
        return bool(self._take_orphan(keys=keys, args=[self._expiry(), reaper, job]))

    def owner(self, job: str) -> str | None:
        raw = self.redis.hget(self.keys.owners(), job)
        return raw.decode() if isinstance(raw, bytes) else None


class Fence:
    """Whether this worker may still write for a job: it holds the job's live lease.

    Without leases (the engine alone, in tests and tools) nothing is fenced: every job is held.
    """

    def __init__(self, leases: LeaseStore | None, worker: str) -> None:
        self.leases = leases
        self.worker = worker

    @property
    def name(self) -> str:
        """The worker name the store's fenced transitions check, or '' when not fenced."""
        return self.worker if self.leases is not None else ""

    def held(self, job_ids: Sequence[str]) -> set[str]:
        """Which of `job_ids` this worker holds a live lease on (all of them when not fenced)."""
        if self.leases is None:
            return set(job_ids)
        return self.leases.held(self.worker, job_ids)

    def check(self, job_id: str) -> None:
        """The fence before a write: LeaseLost unless this worker still holds the job's lease."""
        if job_id not in self.held([job_id]):
            raise LeaseLost(job_id)
