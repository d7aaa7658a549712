"""The key check and a one-job submit over an asyncio Redis client, run on the event loop.

Every request checks its key, and `POST /v1/jobs` is the call services make most. Done with
the sync client, each is a hop to a worker thread and back, and those hand-offs (and the GIL
passing between the threads) cost more CPU than the Redis calls. Here the same scripts, with
the same keys and arguments (`ApiKeys.auth_call`, `StatusStore.submit_call`), run on the loop.

A submit with a key seen before is one round trip (`auth_submit.lua`): the chunk is made for
the tenant and cap the key had when last seen, and the script checks the key, its rate and that
record before it submits. A revoked key therefore stops at once; a cached record only saves
the round trip that would fetch it first.

The requests that stay open, event streams and `Prefer: wait`, poll their reads here too: a
thread each, held for minutes, would leave none for the other routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kandinsky_batch.keys import JobField, JobRef
from kandinsky_batch.redis_client import connect_async
from kandinsky_batch.schema import BatchStatus, JobState
from kandinsky_batch.settings import Settings
from kandinsky_batch.store import records, scripts
from kandinsky_batch.store.apikeys import ApiKey, ApiKeys, digest
from kandinsky_batch.store.queues import Chunk, Pushed, pushed_from
from kandinsky_batch.store.reads import batch_status_from_hash, events_from_reply
from kandinsky_batch.store.status import StatusStore

REDIS_CONNECTIONS = 100  # per process; a burst of requests past it waits its turn for one, never a 503
KNOWN_KEYS_MAX = 10_000  # records kept per process; the cache starts afresh when full

Authenticated = tuple[ApiKey | None, float]  # the record (None: unknown key), seconds to wait


class AsyncStore:
    def __init__(self, settings: Settings, api_keys: ApiKeys, store: StatusStore, retries: int) -> None:
        self.redis = connect_async(settings.redis_url, retries=retries, max_connections=REDIS_CONNECTIONS)
        self.api_keys = api_keys
        self.store = store
        self._auth = self.redis.register_script(scripts.lua("auth"))
        self._submit = self.redis.register_script(scripts.lua("submit"))
        self._auth_submit = self.redis.register_script(scripts.lua("auth_submit"))
        self._known: dict[str, ApiKey] = {}  # sha256 of a key -> its record, as last seen

    async def authenticate(self, secret: str) -> Authenticated:
        """`ApiKeys.authenticate`, on the loop."""
        keys, args = self.api_keys.auth_call(secret)
        return self._seen(secret, self.api_keys.auth_answer(await self._auth(keys=keys, args=args)))

    async def submit(self, chunk: Chunk, high_water: int, now_s: int) -> Pushed:
        """`StatusStore.submit` of one chunk, refused at the high-water mark instead of waiting;
        its records say they were made at `now_s` (unix seconds)."""
        keys, args = self.store.submit_call(chunk, high_water, now_s)
        return pushed_from(chunk, await self._submit(keys=keys, args=args))

    async def authenticate_and_submit(
        self,
        secret: str,
        allowed: Callable[[Authenticated], ApiKey],
        chunk_for: Callable[[ApiKey], Chunk],
        high_water: int,
        now_s: int,
    ) -> tuple[ApiKey, Chunk, Pushed]:
        """The key check, then `submit` of the chunk made for the key's record.

        `allowed` turns the check's answer into the key or raises (an unknown key, one over its
        rate): then nothing is submitted. A record that changed since last seen is submitted
        for again, with a chunk made for the new one.
        """
        known = self._known.get(digest(secret))
        if known is not None:
            chunk = chunk_for(known)
            auth_keys, auth_args = self.api_keys.auth_call(secret)
            keys, args = self.store.submit_call(chunk, high_water, now_s)
            replies = await self._auth_submit(
                keys=[*auth_keys, *keys], args=[*auth_args, known.tenant, known.max_queued, *args]
            )
            key = allowed(self._seen(secret, self.api_keys.auth_answer(replies[0])))
            if len(replies) == 2:
                return key, chunk, pushed_from(chunk, replies[1])
        else:
            key = allowed(await self.authenticate(secret))
        chunk = chunk_for(key)
        return key, chunk, await self.submit(chunk, high_water, now_s)

    # -- the reads of requests that stay open (event streams, `Prefer: wait`): polled, so on the loop

    async def batch(self, batch_id: str) -> BatchStatus:
        """`StatusReader.batch`, on the loop."""
        raw: Any = await self.redis.hgetall(self.store.keys.batch(batch_id))
        return batch_status_from_hash(batch_id, raw)

    async def job_state(self, ref: JobRef) -> JobState | None:
        """`StatusReader.state`, on the loop: the job's hash field and its record, in one round trip."""
        start = records.byte_offset(ref.index)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hget(self.store.keys.job(ref), JobField.STATE)
        pipe.getrange(
            self.store.keys.records(ref.batch_id, records.shard_of(ref.index)),
            start,
            start + records.RECORD_BYTES - 1,
        )
        raw, packed = await pipe.execute()
        if raw:
            return JobState(raw.decode())
        record = records.decode(packed)
        return JobState.QUEUED if record is not None and record.unreceived else None

    async def last_event_id(self) -> bytes | str:
        """`StatusReader.last_event_id`, on the loop."""
        last: Any = await self.redis.xrevrange(self.store.keys.events(), count=1)
        return last[0][0] if last else "0-0"

    async def events_after(self, last_id: bytes | str, count: int) -> list[tuple[bytes, str, JobState]]:
        """`StatusReader.events_after`, on the loop."""
        return events_from_reply(await self.redis.xread({self.store.keys.events(): last_id}, count=count))

    def _seen(self, secret: str, answer: Authenticated) -> Authenticated:
        found = digest(secret)
        if answer[0] is None:
            self._known.pop(found, None)
        else:
            if len(self._known) >= KNOWN_KEYS_MAX:
                self._known.clear()
            self._known[found] = answer[0]
        return answer

    async def close(self) -> None:
        await self.redis.aclose()
