"""A batch upload: its body streamed line by line to the bulk submitter, in threads of its own.

The event loop only moves bytes: it hands the body's chunks to a submitting thread through a
bounded queue (`Inbox`), so a 1M-line body never sits in memory whole, and the loop's side never
needs a thread. Each upload holds one of its tenant's upload slots (producer/api/slots.py) and
runs in the uploads' own thread pool, so uploads never take the threads other routes need.
"""

from __future__ import annotations

import asyncio
import functools
import queue
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from producer.api.problems import Problem
from producer.api.slots import Limits, Slot
from producer.lines import parse_jsonl, split_lines
from producer.submit import SubmitResult, Submitter, submit_lines

MAX_LINE_BYTES = 16 * 1024**2  # one job, inline images included


class Inbox:
    """The chunks of one upload, from the event loop to the submitting thread; `None` ends it.

    The loop's side never blocks and needs no thread: `put` waits for room as a coroutine, woken
    by the thread after each chunk it takes. `close` (the upload given up) ends it without a
    wait: the thread takes what is queued, then stops.
    """

    POLL_S = 0.2  # how soon a thread waiting on an empty queue sees `close`

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = 64) -> None:
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=size)
        self.ended = False
        self._loop = loop
        self._room = asyncio.Event()
        self._closed = False

    async def put(self, chunk: bytes | None) -> None:
        """On the loop: queue a chunk (None: the end), once there is room."""
        while True:
            try:
                self.queue.put_nowait(chunk)
                return
            except queue.Full:
                self._room.clear()
                if not self.queue.full():  # a take in between: its wake-up may be the one cleared
                    continue
                await self._room.wait()

    def close(self) -> None:
        """On the loop: no more chunks come."""
        self._closed = True

    def chunks(self) -> Iterator[bytes]:
        """In the submitting thread: the chunks, until the end or `close`."""
        while not self.ended:
            try:
                chunk = self.queue.get(timeout=self.POLL_S)
            except queue.Empty:
                # Every put came before close: closed and empty is the end.
                self.ended = self._closed and self.queue.empty()
                continue
            self._loop.call_soon_threadsafe(self._room.set)
            if chunk is None:
                self.ended = True
            else:
                yield chunk


def _submit(submitter: Submitter, inbox: Inbox, defaults: dict[str, Any]) -> SubmitResult:
    lines = parse_jsonl(split_lines(inbox.chunks(), MAX_LINE_BYTES))
    try:
        return submit_lines(submitter, lines, defaults)
    finally:
        deque(inbox.chunks(), maxlen=0)  # drain, so the reader is never left blocked on a full queue


def submit_source(submitter: Submitter, chunks: Iterator[bytes], defaults: dict[str, Any]) -> SubmitResult:
    return submit_lines(submitter, parse_jsonl(split_lines(chunks, MAX_LINE_BYTES)), defaults)


async def upload(request: Request, submitter: Submitter, base: dict[str, Any]) -> SubmitResult:
    """Stream the body's lines to the submitter in an upload thread, a bounded queue between.

    The tenant's upload slot is taken before a byte of the body is read (429 past its share).
    """
    limit = submitter.settings.api_max_upload_bytes
    inbox = Inbox(asyncio.get_running_loop())
    done = in_upload_thread(request, submitter.tenant, _submit, submitter, inbox, base)
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Problem(413, "Body too large", f"an upload is at most {limit} bytes")
            if chunk:
                await inbox.put(chunk)
        await inbox.put(None)
    except ClientDisconnect:  # an answer no one reads, and nothing for the log
        raise Problem(400, "Upload cut short", "the connection closed before the body ended") from None
    finally:
        inbox.close()  # given up (too large, the client gone): the thread submits what it has
    return await asyncio.shield(done)


def in_upload_thread(
    request: Request, tenant: str, submit: Callable[..., SubmitResult], *args: Any
) -> asyncio.Future[SubmitResult]:
    """`submit(*args)` in an upload thread, holding one of the tenant's upload slots until the
    thread is done; 429 when the tenant (or the server) has none left."""
    limits: Limits = request.app.state.limits
    slot = limits.uploads.take(tenant, close=True)
    done = asyncio.get_running_loop().run_in_executor(limits.upload_threads, submit, *args)
    done.add_done_callback(functools.partial(_upload_done, slot))
    return done


def _upload_done(slot: Slot, done: asyncio.Future[SubmitResult]) -> None:
    slot.release()
    if not done.cancelled():
        done.exception()  # seen: an upload given up on leaves no "never retrieved" in the log
