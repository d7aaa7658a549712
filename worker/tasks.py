"""The Celery task: parse the message, claim its jobs, run the engine, map outcomes. Logic lives elsewhere."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject

from kandinsky_batch.broker import priority_from_kombu
from kandinsky_batch.errors import HandBack, RetryLater
from kandinsky_batch.keys import queue_list_of
from kandinsky_batch.logs import log_fields
from kandinsky_batch.schema import Priority
from worker import metrics
from worker.context import WorkerContext, get_context
from worker.delivery import claim, fail_unfinished, hand_back, retry_later
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
    queue_list = queue_list_of(str(delivery.get("routing_key") or ""), priority is Priority.LOW)
    jobs = claim(ctx, read_message(message, ctx.settings, ctx.status, priority, queue_list))
    ctx.current = {job.job_id for job in jobs}
    ctx.queue = str(delivery.get("routing_key") or "")
    ctx.task_started = time.monotonic()
    if ctx.beat is not None:
        ctx.beat()  # seen busy at once, not at the next beat
    try:
        ctx.engine.run(jobs)
    except HandBack as exc:
        hand_back(ctx, exc.jobs)
        with log_fields(**ctx.engine.batch_fields(exc.jobs)):
            log.warning("shutting down: %d jobs handed back", len(exc.jobs))
        raise Reject("worker shutting down", requeue=True) from exc
    except RetryLater as exc:
        retry_later(ctx, exc.jobs, exc.cause)
    except Exception as exc:  # nothing the engine expected: fail what is left, keep serving
        fail_unfinished(ctx, jobs, exc)
    finally:
        ctx.leases.release(ctx.name, sorted(ctx.current))
        ctx.current, ctx.task_started, ctx.queue = set(), None, ""
