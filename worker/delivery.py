"""At-least-once delivery around the engine: claim with leases, recover crashed jobs, reap, hand back.

- A message's jobs are leased before they run; a job whose lease another live
  worker holds is skipped (a duplicate delivery never runs it twice at once).
- A job found `running` with an expired lease lost its worker: it is handed back
  (`crashes` + 1), or failed as `attempts_exhausted` once it has crashed
  `max_attempts` times, and listed as a dead letter.
- The reaper does the same for every expired lease and re-sends the job at once,
  so a killed worker's job runs again within about two lease TTLs, not after
  Celery's visibility timeout.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from celery import Celery

from producer.errors import AttemptsExhausted
from producer.keys import TASK_NAME, split_job_id
from producer.leases import Lease
from producer.queue import kombu_priority
from producer.schema import JobSpec, JobState
from producer.submit import build_message
from worker.engine import Job

if TYPE_CHECKING:
    from worker.context import WorkerContext

log = logging.getLogger(__name__)
DEAD_LETTERS_MAX = 100_000


def claim(ctx: WorkerContext, jobs: list[Job]) -> list[Job]:
    """The jobs this worker may run now; the rest are someone else's or dead."""
    outcomes = ctx.leases.acquire(ctx.name, [(j.job_id, j.spec.wire()) for j in jobs])
    mine = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        if outcome is Lease.HELD:
            log.info("skipping %s: another live worker holds it", job.job_id)
        elif outcome is Lease.STALE and ctx.status.state(job.job_id) is JobState.RUNNING:
            if recover(ctx, job.job_id) and ctx.leases.acquire(ctx.name, [(job.job_id, job.spec.wire())]):
                mine.append(job)
        else:
            mine.append(job)
    return mine


def recover(ctx: WorkerContext, job: str) -> bool:
    """A job whose worker died while running it: back to queued, or dead after too many crashes."""
    crashes = int(ctx.redis.hget(ctx.keys.job(job), "cr") or 0) + 1
    if crashes >= ctx.settings.max_attempts:
        err = AttemptsExhausted(f"its worker died during {crashes} attempts; not retried again")
        ctx.status.transition(
            job, JobState.FAILED, [JobState.RUNNING], {"ec": err.code, "em": err.message, "cr": crashes}
        )
        ctx.redis.lpush(ctx.keys.dead_letters(), job)
        ctx.redis.ltrim(ctx.keys.dead_letters(), 0, DEAD_LETTERS_MAX - 1)
        log.warning("job %s is a dead letter: %s", job, err.message)
        return False
    moved, _ = ctx.status.transition(job, JobState.QUEUED, [JobState.RUNNING], {"cr": crashes})
    log.warning("job %s lost its worker (crash %d); handed back", job, crashes)
    return moved


def reap_once(ctx: WorkerContext, app: Celery) -> int:
    """Hand back and re-send every job whose lease expired; returns how many were re-sent."""
    sent = 0
    for job in ctx.leases.expired():
        if not ctx.leases.take_expired(ctx.name, job):
            continue  # another reaper or a renewing worker got there first
        state = ctx.status.state(job)
        if state is JobState.RUNNING and not recover(ctx, job):
            continue
        if state in (JobState.RUNNING, JobState.QUEUED):
            sent += resend(ctx, app, job)
        ctx.leases.release(ctx.name, [job])
    return sent


def resend(ctx: WorkerContext, app: Celery, job: str) -> int:
    """Put a queued job back on its queue, from the spec stored when it was leased."""
    status = ctx.status.job(job)
    parts = split_job_id(job)
    if status.spec is None or parts is None:
        log.error("cannot re-send %s: no stored spec", job)
        return 0
    spec = JobSpec.model_validate(status.spec)
    app.send_task(
        TASK_NAME,
        kwargs=build_message(parts[0], [(parts[1], spec)]),
        queue=ctx.settings.queue_for(spec.mode),
        priority=kombu_priority(status.priority),
    )
    log.info("re-sent %s", job)
    return 1


def hand_back(ctx: WorkerContext, jobs: list[Job]) -> None:
    """Shutting down: running jobs go back to queued, and no lease is kept."""
    for job in jobs:
        ctx.status.transition(job.job_id, JobState.QUEUED, [JobState.RUNNING])
    ctx.leases.release(ctx.name, [j.job_id for j in jobs])


class Reaper:
    """Runs reap_once every half lease TTL in a daemon thread."""

    def __init__(self, ctx: WorkerContext, app: Celery) -> None:
        self.ctx = ctx
        self.app = app
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="reaper", daemon=True)

    def _loop(self) -> None:
        while not self.stopped.wait(self.ctx.settings.lease_ttl_s / 2):
            try:
                reap_once(self.ctx, self.app)
            except Exception:  # a Redis blip must not kill the thread
                log.exception("reaper pass failed")
