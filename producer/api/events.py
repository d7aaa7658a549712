"""A batch's Server-Sent Events: `batch` (counts), a `job` event per state change, then `done`.

Read from the status event stream from the moment of the request, polled on the event loop over
the asyncio client: a stream holds no thread. A comment every 15 s keeps idle connections open.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from kandinsky_batch.keys import JobRef
from producer.api.async_store import AsyncStore

READ_MAX = 1000  # status events read at a time
POLL_S = 0.25
KEEP_ALIVE_S = 15


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def event_stream(store: AsyncStore, batch_id: str) -> AsyncIterator[bytes]:
    """The stream's bytes, until every job of the batch is finished."""
    last = await store.last_event_id()
    batch = await store.batch(batch_id)
    yield sse("batch", {"batch_id": batch_id, "counts": batch.model_dump(mode="json")["counts"]})
    quiet_since = time.monotonic()
    while True:
        # Seen done before the read: the change that finished it is in the stream, so it is read.
        batch = await store.batch(batch_id)
        entries = await store.events_after(last, READ_MAX)
        if entries:
            last = entries[-1][0]
        for _, job, state in entries:
            ref = JobRef.parse(job)
            if ref is not None and ref.batch_id == batch_id:
                yield sse("job", {"job_id": job, "state": state.value})
                quiet_since = time.monotonic()
        if batch.done and len(entries) < READ_MAX:
            break
        if time.monotonic() - quiet_since > KEEP_ALIVE_S:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        if len(entries) < READ_MAX:
            await asyncio.sleep(POLL_S)
    yield sse("done", {"batch_id": batch_id, "counts": batch.model_dump(mode="json")["counts"]})
