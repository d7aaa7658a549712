"""Bounds on the requests that stay open: batch uploads, event streams, `Prefer: wait`.

Each holds a connection (an upload also a thread) for as long as its caller likes, so one tenant
could otherwise hold them all. A tenant gets a few at a time; past its share (or the server's
total, for uploads) an upload or a stream is refused with 429 and `Retry-After` before any work
is done, and a wait is not waited (its job is queued already: producer/api/routes/jobs.py).
The counts live in the API process and are changed only on its event loop, so they need no lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from kandinsky_batch.settings import Settings
from producer.api.problems import Problem

RETRY_AFTER_S = 5


class Slot:
    """One held slot; given back once, however often `release` is called."""

    def __init__(self, slots: Slots, tenant: str) -> None:
        self._slots, self._tenant, self._held = slots, tenant, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._slots.give_back(self._tenant)

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Slots:
    """At most `per_tenant` holders per tenant and `total` in all (None: no total)."""

    def __init__(self, what: str, per_tenant: int, total: int | None = None) -> None:
        self.what, self.per_tenant, self.total = what, per_tenant, total
        self._held: Counter[str] = Counter()
        self._all = 0

    def try_take(self, tenant: str) -> Slot | None:
        """A slot, or None when the tenant's share or the total is in use."""
        if self._held[tenant] >= self.per_tenant or (self.total is not None and self._all >= self.total):
            return None
        self._held[tenant] += 1
        self._all += 1
        return Slot(self, tenant)

    def take(self, tenant: str, close: bool = False) -> Slot:
        """A slot, or 429; `close` asks the client to close the connection (a body left unread)."""
        slot = self.try_take(tenant)
        if slot is not None:
            return slot
        if self._held[tenant] >= self.per_tenant:
            detail = f"a tenant may have {self.per_tenant} {self.what} open at once; retry when one ends"
        else:
            detail = f"the server has {self.total} {self.what} open, all it takes; retry later"
        headers = {"Retry-After": str(RETRY_AFTER_S), **({"Connection": "close"} if close else {})}
        raise Problem(429, f"Too many {self.what}", detail, headers=headers)

    def give_back(self, tenant: str) -> None:
        self._held[tenant] -= 1
        if self._held[tenant] <= 0:
            del self._held[tenant]
        self._all -= 1

    def held(self, tenant: str | None = None) -> int:
        return self._all if tenant is None else self._held[tenant]


@dataclass
class Limits:
    """The API process's slots, and the threads batch uploads are submitted from.

    Uploads have threads of their own, as many as their total: they never wait for, nor take,
    the threads that serve every other request.
    """

    uploads: Slots
    streams: Slots
    waits: Slots
    upload_threads: ThreadPoolExecutor

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            uploads=Slots("uploads", settings.api_uploads_per_tenant, settings.api_uploads),
            streams=Slots("event streams", settings.api_streams_per_tenant),
            waits=Slots("waiting requests", settings.api_waits_per_tenant),
            upload_threads=ThreadPoolExecutor(settings.api_uploads, thread_name_prefix="upload"),
        )

    def close(self) -> None:
        self.upload_threads.shutdown(wait=False, cancel_futures=True)


class HeldStream(StreamingResponse):
    """A streamed response that gives its slot back when it ends, however it ends (a client gone
    before the first byte included: then the body's generator never starts)."""

    def __init__(self, slot: Slot, content: AsyncIterator[bytes], media_type: str) -> None:
        super().__init__(content, media_type=media_type)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()
