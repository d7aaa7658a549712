"""At-least-once delivery around the engine: claim with leases, recover crashed jobs, reap, retry.

- A message's jobs are leased before they run; a job whose lease another live
  worker holds is skipped (a duplicate delivery never runs it twice at once).
- A job found `running` with an expired lease lost its worker: it is handed back
  (`crashes` + 1), or failed as `attempts_exhausted` once it has crashed
  `max_attempts` times, and listed as a dead letter (one store script).
- The reaper does the same for every expired lease and re-sends the job at once,
  so a killed worker's job runs again within about two lease TTLs, not after
  Celery's visibility timeout. It also pushes delayed re-sends that are due.
- Jobs handed back by a storage outage go out again after a backoff, as a delayed
  re-send that any worker's reaper releases (it survives this worker).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from kandinsky_batch.enqueue import enqueue
from kandinsky_batch.errors import AttemptsExhausted, InternalError, StorageUnavailable, compute_backoff
from kandinsky_batch.keys import JobField, JobRef
from kandinsky_batch.logs import log_fields
from kandinsky_batch.schema import JobSpec, JobState, Mode
from kandinsky_batch.store.status import Recovered
from worker import metrics
from worker.jobs import Job
from worker.leases import Lease

if TYPE_CHECKING:
    from worker.context import WorkerContext

log = logging.getLogger(__name__)
RELEASE_INTERVAL_S = 1.0  # how often the reaper pushes due delayed re-sends


def claim(ctx: WorkerContext, jobs: list[Job]) -> list[Job]:
    """The jobs this worker may run now, leased to it; the rest are someone else's or dead.

    A job still marked running that this worker could lease lost its worker (an expired lease,
    or none at all): it is recovered first, which counts the crash, then leased again.
    """
    if not jobs:
        return []
    outcomes = ctx.leases.acquire(ctx.name, [(j.job_id, j.spec.wire()) for j in jobs])
    states = ctx.status.states_of([j.ref for j in jobs])
    mine = []
    for job, outcome, state in zip(jobs, outcomes, states, strict=True):
        if outcome is Lease.HELD:
            with log_fields(**job_fields(ctx, job.ref)):
                log.info("skipping %s: another live worker holds it", job.job_id)
        elif state is not JobState.RUNNING:
            mine.append(job)
        elif recover(ctx, job.ref, "lease_expired" if outcome is Lease.STALE else "orphaned"):
            [again] = ctx.leases.acquire(ctx.name, [(job.job_id, job.spec.wire())])
            if again is Lease.HELD:
                with log_fields(**job_fields(ctx, job.ref)):
                    log.info("skipping %s: another live worker took it meanwhile", job.job_id)
            else:
                mine.append(job)
    return mine


def job_fields(ctx: WorkerContext, ref: JobRef) -> dict[str, Any]:
    """The log fields of a job this worker is not running (one read: it is a rare line)."""
    attempts, spec = ctx.redis.hmget(ctx.keys.job(ref), [JobField.ATTEMPTS, JobField.SPEC])
    mode = json.loads(spec).get("mode", Mode.TEXT2IMG.value) if spec else ""
    return {"job_id": ref.id, "batch_id": ref.batch_id, "mode": mode, "attempt": int(attempts or 0)}


def recover(ctx: WorkerContext, job: JobRef, reason: metrics.Reason) -> bool:
    """A job whose worker died while running it: back to queued (True), or a dead letter.

    `reason` says how its worker was found gone: its lease expired, or it had none.
    """
    fields = job_fields(ctx, job)
    outcome = ctx.status.recover(job, ctx.settings.max_attempts)
    with log_fields(**fields):
        if outcome is Recovered.FAILED:
            log.warning("job %s is a dead letter: its worker kept dying", job)
            metrics.job_done(fields["mode"], "failed", AttemptsExhausted.code)
        elif outcome is Recovered.QUEUED:
            log.warning("job %s lost its worker; handed back", job)
            metrics.redelivered(reason)
    return outcome is Recovered.QUEUED


def reap_once(ctx: WorkerContext) -> int:
    """Hand back and re-send every job whose worker is gone; returns how many were re-sent.

    Those are jobs whose lease expired, and jobs left running with no lease at all. The reaper
    leases each to itself first (so one reaper handles it), as `reaper:<name>`: a worker that
    receives the job meanwhile takes that lease over instead of skipping the job.
    """
    reaper = f"reaper:{ctx.name}"
    taken: list[tuple[str, metrics.Reason]] = [
        (job, "lease_expired") for job in ctx.leases.expired() if ctx.leases.take_expired(reaper, job)
    ]
    started_before = time.time() - ctx.settings.lease_ttl_s
    taken += [
        (job, "orphaned")
        for job in ctx.status.unleased_running(started_before)
        if ctx.leases.take_orphan(reaper, job)
    ]
    sent = 0
    for job, reason in taken:
        ref = JobRef.parse(job)
        state = ctx.status.state(job)
        if ref is not None and state is JobState.RUNNING and not recover(ctx, ref, reason):
            continue
        if ref is not None and state in (JobState.RUNNING, JobState.QUEUED):
            sent += resend(ctx, ref)
        ctx.leases.release(reaper, [job])
    return sent


def resend(ctx: WorkerContext, ref: JobRef, delay_s: float = 0.0) -> int:
    """Put a queued job back on its queue, from the spec stored when it was leased."""
    status = ctx.status.job(ref)
    fields = {"job_id": ref.id, "batch_id": ref.batch_id, "attempt": status.attempts}
    if status.spec is None:
        with log_fields(**fields, mode=""):
            log.error("cannot re-send %s: no stored spec", ref)
        return 0
    spec = JobSpec.model_validate(status.spec)
    enqueue(ctx.status, ctx.settings, ref.batch_id, [(ref.index, spec)], status.priority, delay_s)
    with log_fields(**fields, mode=spec.mode.value):
        log.info("re-sent %s", ref)
    return 1


def retry_later(ctx: WorkerContext, jobs: list[Job], cause: StorageUnavailable) -> None:
    """Jobs handed back by a storage outage: send them again after a backoff, or fail them."""
    s = ctx.settings
    again: list[Job] = []
    tries = 0
    for job in jobs:
        n = int(ctx.status.field(job.ref, JobField.RETRIES) or 1)
        if n > s.max_retries:
            with log_fields(**ctx.engine.job_fields(job)):
                log.warning("job %s failed: %s: gave up after %d tries", job.job_id, cause.code, n)
            if ctx.status.fail(job.ref, cause.code, f"gave up after {n} tries: {cause.message}"):
                metrics.job_done(job.spec.mode.value, "failed", cause.code)
        else:
            again.append(job)
            tries = max(tries, n)
    if not again:
        return
    delay = compute_backoff(tries, s.retry_backoff_s, s.retry_backoff_max_s)
    with log_fields(**ctx.engine.batch_fields(again)):
        log.warning("storage unavailable; %d jobs retry in %.1f s", len(again), delay)
    for job in again:
        metrics.job_done(job.spec.mode.value, "handed_back")
    metrics.redelivered("storage_retry", len(again))
    priority = ctx.status.job(again[0].ref).priority
    enqueue(ctx.status, s, again[0].batch_id, [(j.index, j.spec) for j in again], priority, delay)


def fail_unfinished(ctx: WorkerContext, jobs: list[Job], exc: Exception) -> None:
    """An error nothing expected: every job of the task this worker still holds fails with
    `internal_error` (the traceback goes to the log), so none is left running for good."""
    with log_fields(**ctx.engine.batch_fields(jobs)):
        log.error("task failed unexpectedly; failing its unfinished jobs", exc_info=exc)
    err = InternalError(f"{type(exc).__name__}: {exc}")
    try:
        for job in jobs:
            if ctx.status.fail(job.ref, err.code, err.message, fence=ctx.name):
                metrics.job_done(job.spec.mode.value, "failed", err.code)
    except redis.RedisError as again:
        # Redis is gone too: the jobs stay running with no lease, and a reaper recovers them.
        log.warning("could not record the failure (%s); the reaper will hand the jobs back", again)


def hand_back(ctx: WorkerContext, jobs: list[Job]) -> None:
    """Shutting down: running jobs this worker still holds go back to queued, and no lease is kept.

    Jobs of micro-batches that never started are queued already; the message goes back with them.
    """
    handed = 0
    for job in jobs:
        moved, before = ctx.status.transition(job.ref, JobState.QUEUED, [JobState.RUNNING], fence=ctx.name)
        if moved or before is JobState.QUEUED:
            handed += 1
            metrics.job_done(job.spec.mode.value, "handed_back")
    metrics.redelivered("shutdown", handed)
    ctx.leases.release(ctx.name, [j.job_id for j in jobs])


def finish_storing(ctx: WorkerContext) -> None:
    """Stopping: let background uploads finish within what is left of the grace period, then
    hand back the jobs still storing (queued again and re-sent; their message was acked)."""
    deadline = ctx.stop_deadline()
    left = ctx.settings.shutdown_grace_s if deadline is None else max(0.0, deadline - time.monotonic())
    if ctx.engine.store_pool.wait(left):
        return
    pending = sorted(ctx.engine.store_pool.pending())
    handed = 0
    for ref in (JobRef.parse(job) for job in pending):
        if ref is None:
            continue
        moved, _ = ctx.status.transition(ref, JobState.QUEUED, [JobState.RUNNING], fence=ctx.name)
        if moved:
            handed += resend(ctx, ref)
    ctx.leases.release(ctx.name, pending)
    metrics.redelivered("shutdown", handed)
    log.warning("shutting down: %d jobs still storing after the grace period were handed back", handed)


class Reaper:
    """Pushes due delayed re-sends every second; every half lease TTL, hands back what dead workers held."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def _loop(self) -> None:
        last_reap = time.monotonic()
        while not self.stopped.wait(RELEASE_INTERVAL_S):
            try:
                self.ctx.status.release_due()
                if time.monotonic() - last_reap >= self.ctx.settings.lease_ttl_s / 2:
                    last_reap = time.monotonic()
                    reap_once(self.ctx)
                    returned = self.ctx.taken.return_expired()
                    if returned:
                        log.warning("returned %d taken messages of dead workers to their queues", returned)
            except Exception:  # a Redis blip must not kill the thread
                log.exception("reaper pass failed")
