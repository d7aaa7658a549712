"""At-least-once delivery around the engine: claim with leases, recover crashed jobs, reap, retry.

- A message's jobs are leased before they run; a job whose lease another live
  worker holds is skipped (a duplicate delivery never runs it twice at once).
- A job found `running` with an expired lease lost its worker: it is handed back
  (`crashes` + 1), or failed as `attempts_exhausted` once it has crashed
  `max_attempts` times, and listed as a dead letter (one store script).
- The reaper (worker/reaper.py) does the same for every expired lease and re-sends the
  job at once, so a killed worker's job runs again within about two lease TTLs, not after
  Celery's visibility timeout.
- Jobs handed back by a storage outage go out again after a backoff, as a delayed
  re-send that any worker's reaper releases (it survives this worker).

`Delivery` is given what it uses when the worker is built (status, leases, the storing pool, the
stop deadline), before the engine, which hands it the jobs a storage outage gave back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from kandinsky_batch.enqueue import enqueue
from kandinsky_batch.errors import AttemptsExhausted, InternalError, StorageUnavailable, compute_backoff
from kandinsky_batch.keys import JobField, JobRef
from kandinsky_batch.logs import log_fields
from kandinsky_batch.manifest import BatchDone
from kandinsky_batch.schema import JobSpec, JobState
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.status import Moved, Recovered, StatusStore
from worker import metrics
from worker.jobs import Job, JobLog
from worker.leases import Lease, LeaseStore
from worker.shutdown import StopDeadline
from worker.store_pool import StorePool

log = logging.getLogger(__name__)


class Delivery:
    def __init__(
        self,
        settings: Settings,
        name: str,
        status: StatusStore,
        leases: LeaseStore,
        job_log: JobLog,
        store_pool: StorePool,
        stop_deadline: StopDeadline,
        on_batch_done: BatchDone,
    ) -> None:
        self.settings = settings
        self.name = name  # this worker's, in leases and fenced transitions
        self.status = status
        self.leases = leases
        self.log = job_log
        self.store_pool = store_pool
        self.stop_deadline = stop_deadline
        self.on_batch_done = on_batch_done

    def claim(self, jobs: list[Job]) -> list[Job]:
        """The jobs this worker may run now, leased to it; the rest are someone else's or dead.

        A job still marked running that this worker could lease lost its worker (an expired lease,
        or none at all): it is recovered first, which counts the crash, then leased again.
        """
        if not jobs:
            return []
        outcomes = self.leases.acquire(self.name, [(j.job_id, j.spec.wire()) for j in jobs])
        states = self.status.states_of([j.ref for j in jobs])
        mine = []
        for job, outcome, state in zip(jobs, outcomes, states, strict=True):
            if outcome is Lease.HELD:
                with log_fields(**self.job_fields(job.ref)):
                    log.info("skipping %s: another live worker holds it", job.job_id)
            elif state is not JobState.RUNNING:
                mine.append(job)
            elif self.recover(job.ref, "lease_expired" if outcome is Lease.STALE else "orphaned"):
                [again] = self.leases.acquire(self.name, [(job.job_id, job.spec.wire())])
                if again is Lease.HELD:
                    with log_fields(**self.job_fields(job.ref)):
                        log.info("skipping %s: another live worker took it meanwhile", job.job_id)
                else:
                    mine.append(job)
        return mine

    def job_fields(self, ref: JobRef) -> dict[str, Any]:
        """The log fields of a job this worker is not running (one read: it is a rare line)."""
        attempts, mode = self.status.attempts_and_mode(ref)
        return {"job_id": ref.id, "batch_id": ref.batch_id, "mode": mode, "attempt": attempts}

    def _manifest_if_done(self, ref: JobRef, moved: Moved) -> None:
        if moved.batch_done:
            self.on_batch_done(ref.batch_id)

    def recover(self, job: JobRef, reason: metrics.Reason) -> bool:
        """A job whose worker died while running it: back to queued (True), or a dead letter.

        `reason` says how its worker was found gone: its lease expired, or it had none.
        """
        fields = self.job_fields(job)
        outcome, batch_done = self.status.recover(job, self.settings.max_attempts)
        with log_fields(**fields):
            if outcome is Recovered.FAILED:
                log.warning("job %s is a dead letter: its worker kept dying", job)
                metrics.job_done(fields["mode"], "failed", AttemptsExhausted.code)
            elif outcome is Recovered.QUEUED:
                log.warning("job %s lost its worker; handed back", job)
                metrics.redelivered(reason)
        if batch_done:
            self.on_batch_done(job.batch_id)
        return outcome is Recovered.QUEUED

    def reap_once(self) -> int:
        """Hand back and re-send every job whose worker is gone; returns how many were re-sent.

        Those are jobs whose lease expired, and jobs left running with no lease at all. The reaper
        leases each to itself first (so one reaper handles it), as `reaper:<name>`: a worker that
        receives the job meanwhile takes that lease over instead of skipping the job.
        """
        reaper = f"reaper:{self.name}"
        taken: list[tuple[str, metrics.Reason]] = [
            (job, "lease_expired") for job in self.leases.expired() if self.leases.take_expired(reaper, job)
        ]
        started_before = time.time() - self.settings.lease_ttl_s
        taken += [
            (job, "orphaned")
            for job in self.status.unleased_running(started_before)
            if self.leases.take_orphan(reaper, job)
        ]
        sent = 0
        for job, reason in taken:
            ref = JobRef.parse(job)
            state = self.status.state(job)
            if ref is not None and state is JobState.RUNNING and not self.recover(ref, reason):
                continue
            if ref is not None and state in (JobState.RUNNING, JobState.QUEUED):
                sent += self.resend(ref)
            self.leases.release(reaper, [job])
        return sent

    def resend(self, ref: JobRef, delay_s: float = 0.0) -> int:
        """Put a queued job back on its queue, from the spec stored when it was leased."""
        status = self.status.job(ref)
        fields = {"job_id": ref.id, "batch_id": ref.batch_id, "attempt": status.attempts}
        if status.spec is None:
            with log_fields(**fields, mode=""):
                log.error("cannot re-send %s: no stored spec", ref)
            return 0
        spec = JobSpec.model_validate(status.spec)
        enqueue(self.status, self.settings, ref.batch_id, [(ref.index, spec)], status.priority, delay_s)
        with log_fields(**fields, mode=spec.mode.value):
            log.info("re-sent %s", ref)
        return 1

    def retry_later(self, jobs: list[Job], cause: StorageUnavailable) -> None:
        """Jobs handed back by a storage outage: send them again after a backoff, or fail them."""
        s = self.settings
        again: list[Job] = []
        tries = 0
        for job in jobs:
            n = int(self.status.field(job.ref, JobField.RETRIES) or 1)
            if n > s.max_retries:
                with log_fields(**self.log.job_fields(job)):
                    log.warning("job %s failed: %s: gave up after %d tries", job.job_id, cause.code, n)
                moved = self.status.fail(job.ref, cause.code, f"gave up after {n} tries: {cause.message}")
                if moved:
                    metrics.job_done(job.spec.mode.value, "failed", cause.code)
                self._manifest_if_done(job.ref, moved)
            else:
                again.append(job)
                tries = max(tries, n)
        if not again:
            return
        delay = compute_backoff(tries, s.retry_backoff_s, s.retry_backoff_max_s)
        with log_fields(**self.log.batch_fields(again)):
            log.warning("storage unavailable; %d jobs retry in %.1f s", len(again), delay)
        for job in again:
            metrics.job_done(job.spec.mode.value, "handed_back")
        metrics.redelivered("storage_retry", len(again))
        priority = self.status.job(again[0].ref).priority
        enqueue(self.status, s, again[0].batch_id, [(j.index, j.spec) for j in again], priority, delay)

    def fail_unfinished(self, jobs: list[Job], exc: Exception) -> None:
        """An error nothing expected: every job of the task this worker still holds fails with
        `internal_error` (the traceback goes to the log), so none is left running for good."""
        with log_fields(**self.log.batch_fields(jobs)):
            log.error("task failed unexpectedly; failing its unfinished jobs", exc_info=exc)
        err = InternalError(f"{type(exc).__name__}: {exc}")
        try:
            for job in jobs:
                moved = self.status.fail(job.ref, err.code, err.message, fence=self.name)
                if moved:
                    metrics.job_done(job.spec.mode.value, "failed", err.code)
                self._manifest_if_done(job.ref, moved)
        except redis.RedisError as again:
            # Redis is gone too: the jobs stay running with no lease, and a reaper recovers them.
            log.warning("could not record the failure (%s); the reaper will hand the jobs back", again)

    def hand_back(self, jobs: list[Job]) -> None:
        """Shutting down: running jobs this worker still holds go back to queued, and no lease is kept.

        Jobs of micro-batches that never started are queued already; the message goes back with them.
        """
        handed = 0
        for job in jobs:
            moved = self.status.transition(job.ref, JobState.QUEUED, [JobState.RUNNING], fence=self.name)
            if moved or moved.before is JobState.QUEUED:
                handed += 1
                metrics.job_done(job.spec.mode.value, "handed_back")
        metrics.redelivered("shutdown", handed)
        self.leases.release(self.name, [j.job_id for j in jobs])

    def finish_storing(self) -> None:
        """Stopping: let background uploads finish within what is left of the grace period, then
        hand back the jobs still storing (queued again and re-sent; their message was acked)."""
        deadline = self.stop_deadline()
        left = self.settings.shutdown_grace_s if deadline is None else max(0.0, deadline - time.monotonic())
        if self.store_pool.wait(left):
            return
        pending = sorted(self.store_pool.pending())
        handed = 0
        for ref in (JobRef.parse(job) for job in pending):
            if ref is None:
                continue
            if self.status.transition(ref, JobState.QUEUED, [JobState.RUNNING], fence=self.name):
                handed += self.resend(ref)
        self.leases.release(self.name, pending)
        metrics.redelivered("shutdown", handed)
        log.warning("shutting down: %d jobs still storing after the grace period were handed back", handed)
