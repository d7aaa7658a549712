"""API keys for the HTTP API: each belongs to one tenant; only a hash of it is kept in Redis.

A key is shown once, when it is made (`kandinsky-batch keys create`). Redis holds its sha256,
mapped to the key's id, tenant and limits, so a copy of Redis gives nobody a usable key. A
tenant's weight in the fair share of the queues (kandinsky_batch/store/fair.py) is kept beside
them, one per tenant, whatever its keys.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from kandinsky_batch.keys import NO_TENANT, Keys
from kandinsky_batch.store import scripts

KEY_PREFIX = "kb_"
# A tenant names a storage folder (`sources/<tenant>/`), so it starts with a letter, digit or '_':
# never '.', '..' or an option-like '-'.
TENANT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
MAX_WEIGHT = 1000


@dataclass(frozen=True)
class ApiKey:
    """What a key allows; never the key itself."""

    id: str
    tenant: str
    admin: bool = False
    rate_per_s: float = 20.0  # requests per second
    max_queued: int = 100_000  # unfinished jobs of its tenant
    created: float = 0.0


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self.key = keys.api_keys()
        self._auth = client.register_script(scripts.lua("auth"))

    def create(
        self,
        tenant: str,
        *,
        admin: bool = False,
        rate_per_s: float = 20.0,
        max_queued: int = 100_000,
        weight: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for `tenant`: its record, and the secret (shown once, stored only as a hash).

        With `weight`, the tenant's weight is set too; without, it stays what it was (1 at first).
        """
        if not TENANT.fullmatch(tenant):
            raise ValueError(
                f"a tenant is 1 to 64 of letters, digits, '_', '.', '-', not starting with '.' or '-'; "
                f"not {tenant!r}"
            )
        if weight is not None:
            self.set_weight(tenant, weight)
        record = ApiKey(secrets.token_hex(6), tenant, admin, rate_per_s, max_queued, round(time.time(), 3))
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        self.redis.hset(self.key, digest(secret), json.dumps(asdict(record)))
        return record, secret

    def set_weight(self, tenant: str, weight: int) -> None:
        """A tenant's weight in the fair share: against the other tenants with jobs waiting in a
        queue, it is served images in proportion to its weight. `NO_TENANT` (`-`) is every job
        sent without a tenant (the SDK, the CLI, open-format senders). Takes effect at once."""
        if tenant != NO_TENANT and not TENANT.fullmatch(tenant):
            raise ValueError(f"no tenant can be named {tenant!r}")
        if not 1 <= weight <= MAX_WEIGHT:
            raise ValueError(f"a weight is a whole number from 1 to {MAX_WEIGHT}, not {weight}")
        self.redis.hset(self.keys.weights(), tenant, weight)

    def weights(self) -> dict[str, int]:
        """Every tenant given a weight (any other has 1)."""
        raw: Any = self.redis.hgetall(self.keys.weights())
        return {k.decode(): int(float(v)) for k, v in raw.items()}

    def authenticate(self, secret: str) -> tuple[ApiKey | None, float]:
        """The key's record (None for an unknown or revoked key), and 0 if this request is within
        its rate, else the seconds until it would be: one script, one round trip."""
        keys, args = self.auth_call(secret)
        return self.auth_answer(self._auth(keys=keys, args=args))

    def auth_call(self, secret: str) -> tuple[list[str], list[Any]]:
        """The auth script's keys and arguments, for this client or an asyncio one."""
        return [self.key, self.keys.rate("")], [digest(secret), time.time()]

    @staticmethod
    def auth_answer(found: list[Any]) -> tuple[ApiKey | None, float]:
        """What the auth script's reply says: `authenticate`'s answer."""
        if not found[0]:
            return None, 0.0
        _, raw, allowed, wait_ms = found
        return ApiKey(**json.loads(raw)), 0.0 if allowed else int(wait_ms) / 1000

    def all(self) -> list[ApiKey]:
        records = [ApiKey(**json.loads(raw)) for raw in self.redis.hvals(self.key)]
        return sorted(records, key=lambda r: (r.tenant, r.created))

    def revoke(self, key_id: str) -> bool:
        """Remove the key with this id; False if there is none."""
        for hashed, raw in self.redis.hscan_iter(self.key):
            if json.loads(raw)["id"] == key_id:
                return bool(self.redis.hdel(self.key, hashed))
        return False
