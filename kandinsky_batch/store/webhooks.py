"""Webhook state in Redis: tenants' signing secrets, pending deliveries, the dead ones.

A delivery is queued once (its id is fixed, so a repeat is a no-op), claimed with a lease by
whichever dispatcher takes it, then deleted on a 2xx, rescheduled with backoff on a failure,
or moved to its tenant's dead list. The dispatchers read status changes from the event stream
through one consumer group, so several API processes share the work and each change is
handled once.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

import redis

from kandinsky_batch.keys import BatchField, EventField, Keys
from kandinsky_batch.schema import JobState
from kandinsky_batch.store import scripts
from kandinsky_batch.webhooks import Delivery, Webhook

GROUP = "webhooks"
DEAD_MAX = 10_000  # dead deliveries kept per tenant
CLAIM_LEASE_S = 120.0  # a claimed delivery is tried again after this if its sender vanished

StreamEntry = tuple[str, str, JobState]  # (entry id, job id, state)


class WebhookStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._claim = client.register_script(scripts.lua("webhook_claim"))

    # -- secrets and configuration ---------------------------------------------------

    def secret(self, tenant: str) -> str:
        """The tenant's signing secret (`whsec_` + base64), made on first use."""
        fresh = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        self.redis.hsetnx(self.keys.webhook_secrets(), tenant, fresh)
        stored: Any = self.redis.hget(self.keys.webhook_secrets(), tenant)
        return str(stored.decode())

    def webhook_of(self, batch_id: str) -> tuple[Webhook, str] | None:
        """A batch's webhook and tenant, or None if it has none."""
        raw: Any = self.redis.hmget(self.keys.batch(batch_id), [BatchField.WEBHOOK, BatchField.TENANT])
        if raw[0] is None or raw[1] is None:
            return None
        hook = Webhook.from_json(raw[0])
        return (hook, raw[1].decode()) if hook is not None else None

    def first_batch_done(self, batch_id: str) -> bool:
        """True once per batch: whoever gets it queues the batch's `batch.completed`."""
        return bool(self.redis.hsetnx(self.keys.batch(batch_id), BatchField.WEBHOOK_DONE, "1"))

    # -- the event stream ------------------------------------------------------------

    def join_group(self) -> None:
        """Make the consumer group if it is missing; it starts at the stream's end."""
        try:
            self.redis.xgroup_create(self.keys.events(), GROUP, id="$", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, consumer: str, count: int, block_ms: int) -> list[StreamEntry]:
        """New changes for this consumer; they stay pending until `ack`."""
        answer: Any = self.redis.xreadgroup(
            GROUP, consumer, {self.keys.events(): ">"}, count=count, block=block_ms
        )
        return [entry for _, entries in answer or [] for entry in _entries(entries)]

    def reclaim(self, consumer: str, idle_ms: int, count: int) -> list[StreamEntry]:
        """Changes another consumer read but never acknowledged (it died), now this one's."""
        answer: Any = self.redis.xautoclaim(
            self.keys.events(), GROUP, consumer, min_idle_time=idle_ms, start_id="0-0", count=count
        )
        return list(_entries(answer[1]))

    def ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            self.redis.xack(self.keys.events(), GROUP, *entry_ids)

    # -- deliveries ------------------------------------------------------------------

    def enqueue(self, delivery: Delivery) -> bool:
        """Queue a delivery for now; False (and nothing changes) if its id was queued before."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(self.keys.webhook_deliveries(), delivery.id, delivery.to_json())
        pipe.zadd(self.keys.webhook_due(), {delivery.id: time.time()}, nx=True)
        added, _ = pipe.execute()
        return bool(added)

    def claim(self, limit: int, lease_s: float = CLAIM_LEASE_S) -> list[Delivery]:
        """Up to `limit` due deliveries, each leased to the caller for `lease_s`."""
        if limit <= 0:
            return []
        answer: Any = self._claim(
            keys=[self.keys.webhook_due(), self.keys.webhook_deliveries()], args=[time.time(), limit, lease_s]
        )
        found = []
        for body in answer[1::2]:
            try:
                found.append(Delivery.from_json(body))
            except (ValueError, TypeError, KeyError):
                continue  # not ours: left to expire from the due set on the next claim
        return found

    def delivered(self, delivery: Delivery) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.webhook_due(), delivery.id)
        pipe.hdel(self.keys.webhook_deliveries(), delivery.id)
        pipe.execute()

    def reschedule(self, delivery: Delivery, at: float) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.webhook_deliveries(), delivery.id, delivery.to_json())
        pipe.zadd(self.keys.webhook_due(), {delivery.id: at})
        pipe.execute()

    def bury(self, delivery: Delivery) -> None:
        """Give up on a delivery: off the pending set, onto its tenant's dead list."""
        dead = self.keys.webhook_dead(delivery.tenant)
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(dead, delivery.to_json())
        pipe.ltrim(dead, 0, DEAD_MAX - 1)
        pipe.zrem(self.keys.webhook_due(), delivery.id)
        pipe.hdel(self.keys.webhook_deliveries(), delivery.id)
        pipe.execute()

    def dead(self, tenant: str, limit: int) -> list[Delivery]:
        raw: Any = self.redis.lrange(self.keys.webhook_dead(tenant), 0, limit - 1)
        return [Delivery.from_json(body) for body in raw]

    def pending(self) -> int:
        return int(self.redis.zcard(self.keys.webhook_due()))


def _entries(entries: Any) -> list[StreamEntry]:
    """Stream entries as (id, job, state); entries that are not status changes are skipped."""
    out = []
    for entry_id, fields in entries or []:
        if not fields:
            continue  # deleted by trimming while pending
        job, state = fields.get(EventField.JOB.encode()), fields.get(EventField.STATE.encode())
        try:
            out.append((entry_id.decode(), job.decode(), JobState(state.decode())))
        except (AttributeError, ValueError, UnicodeDecodeError):
            out.append((entry_id.decode(), "", JobState.QUEUED))  # acked and ignored
    return out
