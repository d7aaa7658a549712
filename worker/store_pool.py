"""Storing in the background: decoding, CLIP scores, encoding, uploads and status writes overlap the next micro-batch.

The engine hands each generated micro-batch to one storing thread and goes on generating. What does
not change: a job is `succeeded` only after its objects are stored (the same code stores it, in
order), its lease is renewed until then (the heartbeat renews every job this pool holds), and memory
stays bounded: `submit` blocks while the images waiting to be stored would pass `max_images`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class StorePool:
    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="store")
        self._changed = threading.Condition()
        self._images = 0
        self._jobs: dict[str, int] = {}  # job id -> micro-batches of it still to store

    def submit(self, job_ids: list[str], images: int, store: Callable[[], None]) -> None:
        """Run `store` in the background once the images waiting fit under the cap."""
        with self._changed:
            self._changed.wait_for(lambda: self._images == 0 or self._images + images <= self.max_images)
            self._images += images
            for job in job_ids:
                self._jobs[job] = self._jobs.get(job, 0) + 1
        self._executor.submit(self._run, job_ids, images, store)

    def _run(self, job_ids: list[str], images: int, store: Callable[[], None]) -> None:
        try:
            store()
        except Exception:  # `store` handles what it expects; anything else must not kill the thread
            log.exception("storing %s failed unexpectedly", job_ids)
        finally:
            with self._changed:
                self._images -= images
                for job in job_ids:
                    self._jobs[job] -= 1
                    if not self._jobs[job]:
                        del self._jobs[job]
                self._changed.notify_all()

    def pending(self) -> set[str]:
        """Ids of the jobs still being stored: their leases must be kept alive."""
        with self._changed:
            return set(self._jobs)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted is stored (True), or `timeout` seconds passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._jobs or self._images:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True
