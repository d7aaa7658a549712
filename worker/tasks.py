"""The Celery task: parse the message, claim its jobs, run the engine, map outcomes. Logic lives elsewhere."""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject

from kandinsky_batch.broker import priority_from_kombu
from kandinsky_batch.errors import HandBack
from kandinsky_batch.keys import queue_list_of
from kandinsky_batch.logs import log_fields
from worker import metrics
from worker.context import WorkerContext, get_context
from worker.jobs import Job
from worker.messages import read_message

log = logging.getLogger(__name__)


def run_jobs(task: Task, **message: Any) -> None:
    ctx = get_context()
    metrics.BUSY.set(1)
    metrics.progressed()
    try:
        _run(ctx, task, message)
    finally:
        metrics.BUSY.set(0)


def _run(ctx: WorkerContext, task: Task, message: dict[str, Any]) -> None:
    delivery = task.request.delivery_info or {}
    priority = priority_from_kombu(delivery.get("priority"))
    queue = str(delivery.get("routing_key") or "")
    queue_list = queue_list_of(queue, priority)  # where its jobs were counted onto
    jobs: list[Job] = []
    handed_back = False
    try:
        _feed(ctx, queue)
        read = read_message(message, ctx.settings, ctx.status, ctx.on_batch_done, priority, queue_list)
        jobs = ctx.delivery.claim(read)
        ctx.current, ctx.queue = {job.job_id for job in jobs}, queue
        jobs += ctx.gatherer.take_more(jobs, queue)
        ctx.current = {job.job_id for job in jobs}
        ctx.task_started = time.monotonic()
        if ctx.beat is not None:
            ctx.beat()  # seen busy at once, not at the next beat
        try:
            # Storing overlaps the next task (leases kept meanwhile); jobs a storage outage hands
            # back go to ctx.delivery.retry_later, from here or from the storing thread.
            ctx.engine.run(jobs, wait=False)
        except HandBack as exc:
            ctx.delivery.hand_back(exc.jobs)
            ctx.taken.give_back(ctx.name)  # the messages this worker took go back with Celery's
            handed_back = True
            with log_fields(**ctx.job_log.batch_fields(exc.jobs)):
                log.warning("shutting down: %d jobs handed back", len(exc.jobs))
            raise Reject("worker shutting down", requeue=True) from exc
        except Exception as exc:  # nothing the engine expected: fail what is left, keep serving
            ctx.delivery.fail_unfinished(jobs, exc)
    finally:
        if not handed_back:
            _drop_taken(ctx)
        ctx.leases.release(ctx.name, sorted(ctx.current - ctx.store_pool.pending()))
        ctx.current, ctx.task_started = set(), None  # `queue` stays: its jobs may still be storing
        _feed(ctx, queue)  # the next message, chosen now: a take may have left the Celery list empty


def _feed(ctx: WorkerContext, queue: str) -> None:
    """Feed the queue's next message onto its Celery list for the other workers, in fair order.

    If Redis is gone, the reapers feed it once it is back: the task goes on without.
    """
    if not queue:
        return
    try:
        ctx.status.fair.feed([queue])
    except redis.RedisError as exc:
        log.warning("could not feed queue %s (%s); a reaper will", queue, exc)


def _drop_taken(ctx: WorkerContext) -> None:
    """Forget the messages taken for this task: each of their jobs is finished, failed or re-sent.

    If Redis is gone, they stay under a lease nobody renews, and a reaper puts them back on their
    list: the jobs run again unless they finished, never lost.
    """
    try:
        ctx.taken.drop(ctx.name)
    except redis.RedisError as exc:
        log.warning("could not drop the messages taken for this task (%s); a reaper will return them", exc)
