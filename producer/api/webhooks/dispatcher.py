"""The webhook dispatcher: status changes in, signed deliveries out, in the API process.

Three threads, none of them on a worker's path:
- the reader takes status changes from the event stream (a consumer group, so several API
  processes share them and a change another one read but never acknowledged is reclaimed),
  turns those a batch's webhook wants into deliveries in Redis, then acknowledges them;
- the sender claims due deliveries and posts them from a bounded pool, so a slow or dead
  receiver holds one slot for at most `webhook_timeout_s`, and generation never waits;
- the progress poller reads the step of each running job whose webhook wants `progress`
  every 2 s, so a job sends at most one progress delivery per 2 s.

Failed tries are retried with exponential backoff (`webhook_retry_base_s`, doubled, at most
`webhook_retry_max_s`) until `webhook_give_up_s` after the event, then moved to the tenant's
dead list. A refused address goes there at once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from kandinsky_batch.keys import JobRef
from kandinsky_batch.schema import TERMINAL_STATES, JobState
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.reads import StatusReader
from kandinsky_batch.store.webhooks import StreamEntry, WebhookStore
from kandinsky_batch.webhooks import Delivery, Webhook, WebhookEvent
from producer.api.webhooks import sender

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 2.0
CACHE_S = 30.0  # how long a batch's webhook is remembered
CACHE_MAX = 10_000
WATCH_MAX = 10_000  # running jobs followed for progress
RECLAIM_EVERY_S = 30.0
RECLAIM_IDLE_MS = 60_000
HISTORY = 5


class Dispatcher:
    def __init__(self, settings: Settings, client: redis.Redis, reader: StatusReader) -> None:
        self.settings = settings
        self.reader = reader
        self.store = WebhookStore(client, reader.keys)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(settings.webhook_concurrency, thread_name_prefix="webhook")
        self._slots = threading.Semaphore(settings.webhook_concurrency)
        self._hooks: dict[str, tuple[float, tuple[Webhook, str] | None]] = {}
        self._watched: dict[str, tuple[Webhook, str, int]] = {}  # job -> (hook, tenant, last step)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for name, loop in (
            ("read", self._read_loop),
            ("send", self._send_loop),
            ("progress", self._poll_loop),
        ):
            thread = threading.Thread(
                target=self._forever, args=(loop,), name=f"webhooks-{name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop taking work; a try in flight is left to its lease and done again by whoever is next."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _forever(self, loop: Any) -> None:
        """Run one loop until stopped; Redis being away only pauses it."""
        while not self._stop.is_set():
            try:
                loop()
            except redis.RedisError as exc:
                log.warning("webhooks: Redis unavailable (%s); retrying", exc)
                self._stop.wait(1.0)
            except Exception:
                log.exception("webhooks: unexpected error; going on")
                self._stop.wait(1.0)

    # -- status changes -> deliveries ------------------------------------------------

    def _read_loop(self) -> None:
        self.store.join_group()  # here, not in start: Redis may be down when the API starts
        last_reclaim = 0.0
        while not self._stop.is_set():
            if time.monotonic() - last_reclaim > RECLAIM_EVERY_S:
                last_reclaim = time.monotonic()
                self.handle(self.store.reclaim(self.consumer, RECLAIM_IDLE_MS, 500))
            self.handle(self.store.read(self.consumer, 500, 1000))

    def handle(self, entries: list[StreamEntry]) -> None:
        """Queue what each change's webhook wants, then acknowledge the changes."""
        for entry_id, job, state in entries:
            ref = JobRef.parse(job)
            found = self._hook(ref.batch_id) if ref is not None else None
            if ref is None or found is None:
                continue
            hook, tenant = found
            if state is JobState.RUNNING:
                if WebhookEvent.STARTED in hook.events:
                    self._queue(f"msg_{entry_id}.started", tenant, hook, "job.started", self._job_data(ref))
                if WebhookEvent.PROGRESS in hook.events:
                    with self._lock:
                        if len(self._watched) < WATCH_MAX:
                            self._watched[job] = (hook, tenant, 0)  # step 0 is no progress yet
            elif state in TERMINAL_STATES:
                with self._lock:
                    self._watched.pop(job, None)
                if WebhookEvent.COMPLETED in hook.events:
                    self._queue(
                        f"msg_{entry_id}.completed", tenant, hook, "job.completed", self._job_data(ref)
                    )
                    if hook.batch:
                        self._batch_completed(ref.batch_id, tenant, hook)
        self.store.ack([entry_id for entry_id, _, _ in entries])

    def _hook(self, batch_id: str) -> tuple[Webhook, str] | None:
        now = time.monotonic()
        cached = self._hooks.get(batch_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        if len(self._hooks) >= CACHE_MAX:
            self._hooks.clear()
        found = self.store.webhook_of(batch_id)
        self._hooks[batch_id] = (now + CACHE_S, found)
        return found

    def _job_data(self, ref: JobRef) -> dict[str, Any]:
        return self.reader.job(ref).model_dump(mode="json", exclude={"metadata", "spec"})

    def _batch_completed(self, batch_id: str, tenant: str, hook: Webhook) -> None:
        batch = self.reader.batch(batch_id)
        if batch.done and self.store.first_batch_done(batch_id):
            data = batch.model_dump(mode="json")
            self._queue(f"msg_{batch_id}.completed.{batch.total}", tenant, hook, "batch.completed", data)

    def _queue(self, delivery_id: str, tenant: str, hook: Webhook, kind: str, data: dict[str, Any]) -> None:
        self.store.enqueue(Delivery(delivery_id, tenant, hook.url, kind, data, time.time()))

    # -- progress --------------------------------------------------------------------

    def _poll_loop(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY_S):
            self.poll_progress()

    def poll_progress(self) -> None:
        """One progress delivery per watched job whose step moved since the last look."""
        with self._lock:
            watched = list(self._watched.items())
        if not watched:
            return
        steps = self.reader.steps_of([job for job, _ in watched])
        for (job, (hook, tenant, last)), (state, now_step, total) in zip(watched, steps, strict=True):
            if state is not JobState.RUNNING:
                with self._lock:
                    self._watched.pop(job, None)
                continue
            if now_step > last:
                data = {"job_id": job, "step": now_step, "total": total}
                self._queue(f"msg_{job}.progress.{time.time_ns()}", tenant, hook, "job.progress", data)
                with self._lock:
                    if job in self._watched:
                        self._watched[job] = (hook, tenant, now_step)

    # -- deliveries -> receivers -----------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue  # every slot is busy
            try:
                claimed = self.store.claim(1)
            except BaseException:
                self._slots.release()
                raise
            if claimed:
                self._pool.submit(self._try, claimed[0])
            else:
                self._slots.release()
                self._stop.wait(0.2)

    def _try(self, delivery: Delivery) -> None:
        try:
            secret = self.store.secret(delivery.tenant)
            outcome = sender.send(delivery, secret, self.settings)
            self._settle(delivery, outcome)
        except redis.RedisError as exc:  # the claim's lease brings it back
            log.warning("webhooks: Redis unavailable while settling %s: %s", delivery.id, exc)
        except Exception:
            log.exception("webhooks: unexpected error sending %s", delivery.id)
        finally:
            self._slots.release()

    def _settle(self, delivery: Delivery, outcome: sender.Outcome) -> None:
        delivery.attempts += 1
        if outcome.delivered:
            self.store.delivered(delivery)
            return
        delivery.last_error = outcome.error
        delivery.history = [*delivery.history, outcome.error][-HISTORY:]
        at = None if outcome.final else sender.next_try(delivery, self.settings, time.time())
        if at is None:
            log.warning("webhooks: giving up on %s to %s: %s", delivery.id, delivery.url, outcome.error)
            self.store.bury(delivery)
        else:
            self.store.reschedule(delivery, at)
