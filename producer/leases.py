"""Leases: which worker holds which job, kept alive by heartbeats.

A sorted set maps job -> lease expiry and a hash maps job -> worker. A worker
leases every job of a message before running it; a second delivery while the
lease is alive is skipped; an expired lease means its worker died, and the
reaper hands the job back. Status transitions away from `running` drop the lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

import redis

from producer.keys import Keys

# KEYS: leases, owners, job_1..job_n   ARGV: now, expiry, worker, spec_1..spec_n
# Returns per job: 'mine' | 'held' (alive, another worker) | 'stale' (expired lease taken over)
_ACQUIRE = """
local now, expiry, worker = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local out = {}
for i = 3, #KEYS do
  local job = string.match(KEYS[i], ':job:(.*)$')
  local score = tonumber(redis.call('ZSCORE', KEYS[1], job) or '-1')
  local owner = redis.call('HGET', KEYS[2], job)
  if score > now and owner and owner ~= worker then
    out[i - 2] = 'held'
  else
    out[i - 2] = (score >= 0 and score <= now) and 'stale' or 'mine'
    redis.call('ZADD', KEYS[1], expiry, job)
    redis.call('HSET', KEYS[2], job, worker)
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], 'sp', ARGV[i + 1]) end
  end
end
return out
"""

# KEYS: leases, owners   ARGV: expiry, worker, job_1..job_n  -> jobs renewed
_RENEW = """
local n = 0
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[2] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
    n = n + 1
  end
end
return n
"""

# KEYS: leases, owners   ARGV: worker, job_1..job_n  -> jobs released
_RELEASE = """
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
"""

# KEYS: leases, owners   ARGV: now, expiry, reaper, job  -> 1 if the expired lease is now the reaper's
_TAKE_EXPIRED = """
local score = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[4]) or '-1')
if score < 0 or score > tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[3])
return 1
"""


class Lease(StrEnum):
    MINE = "mine"
    HELD = "held"
    STALE = "stale"


class LeaseStore:
    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: float) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._take = client.register_script(_TAKE_EXPIRED)

    def _expiry(self) -> float:
        return time.time() + self.ttl_s

    def acquire(self, worker: str, jobs: Sequence[tuple[str, dict[str, Any]]]) -> list[Lease]:
        """Lease `(job_id, wire spec)` jobs for `worker`; the spec is stored for redelivery."""
        if not jobs:
            return []
        keys = [self.keys.leases(), self.keys.owners(), *[self.keys.job(j) for j, _ in jobs]]
        args: list[Any] = [time.time(), self._expiry(), worker, *[json.dumps(spec) for _, spec in jobs]]
        return [Lease(r.decode()) for r in self._acquire(keys=keys, args=args)]

    def renew(self, worker: str, jobs: Sequence[str]) -> int:
        if not jobs:
            return 0
        return int(
            self._renew(keys=[self.keys.leases(), self.keys.owners()], args=[self._expiry(), worker, *jobs])
        )

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

    def owner(self, job: str) -> str | None:
        raw = self.redis.hget(self.keys.owners(), job)
        return raw.decode() if isinstance(raw, bytes) else None
