"""Whether the server can still serve its synchronous routes, for `/healthz`.

Those routes run in anyio's worker threads (40 of them). If every thread is held by a request
that never ends, the event loop still answers but nothing else does: liveness must see that,
or no orchestrator ever restarts the process. A pool that is merely busy, its threads coming
and going (requests waiting out a Redis outage, say), is alive.
"""

from __future__ import annotations

import anyio
import anyio.to_thread


def _nothing() -> None:
    """The no-op sent through the pool."""


async def threads_move(timeout_s: float) -> bool:
    """True if a no-op gets a worker thread within `timeout_s`, or, when it does not, if a
    thread held at the start was given back meanwhile (the pool is busy, not stuck)."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    holders = limiter.statistics().borrowers  # kept referenced, so their ids stay theirs
    with anyio.move_on_after(timeout_s):
        await anyio.to_thread.run_sync(_nothing)
        return True
    still = {id(holder) for holder in limiter.statistics().borrowers}
    return any(id(holder) not in still for holder in holders)
