"""Batch ids of an Idempotency-Key: the same key of the same tenant gives the same batch, and
nobody without the server's secret can work out another tenant's.

A plain hash of tenant and key could be computed by anyone who guesses both; an HMAC under a
random secret kept in Redis (made once, shared by every API process) cannot.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import redis.asyncio

from kandinsky_batch.keys import Keys


def keyed_batch_id(secret: bytes, tenant: str, key: str) -> str:
    """The batch of tenant's Idempotency-Key `key` under `secret`."""
    mac = hmac.new(secret, f"{tenant}\0{key}".encode(), hashlib.sha256)
    return "h" + mac.hexdigest()[:19]


class KeyedBatchIds:
    def __init__(self, client: redis.asyncio.Redis, keys: Keys) -> None:
        self.redis = client
        self.key = keys.batch_id_secret()
        self._secret: bytes | None = None

    async def secret(self) -> bytes:
        """The shared secret: made by the first API process that needs it, then read and kept."""
        if self._secret is None:
            await self.redis.set(self.key, secrets.token_hex(32), nx=True)
            value = await self.redis.get(self.key)
            if not isinstance(value, bytes) or not value:
                raise redis.RedisError("the batch id secret could not be read back")
            self._secret = value
        return self._secret

    async def batch_id(self, tenant: str, key: str) -> str:
        return keyed_batch_id(await self.secret(), tenant, key)
