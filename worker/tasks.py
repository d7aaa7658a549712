"""The Celery task: parse the message, claim its jobs, run the engine, map outcomes. Logic lives elsewhere."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import Reject

from producer.errors import compute_backoff
from producer.queue import priority_from_kombu
from producer.submit import build_message
from worker.context import get_context
from worker.delivery import claim, hand_back
from worker.engine import HandBack, RetryLater
from worker.messages import parse_message

log = logging.getLogger(__name__)


def run_jobs(task: Task, **message: Any) -> None:
    ctx = get_context()
    priority = priority_from_kombu((task.request.delivery_info or {}).get("priority"))
    jobs = claim(ctx, parse_message(message, ctx.settings, ctx.status, priority))
    ctx.current = {job.job_id for job in jobs}
    ctx.task_started = time.monotonic()
    try:
        ctx.engine.run(jobs)
    except HandBack as exc:
        hand_back(ctx, exc.jobs)
        log.warning("shutting down: %d jobs handed back", len(exc.jobs))
        raise Reject("worker shutting down", requeue=True) from exc
    except RetryLater as exc:
        retries = task.request.retries
        if not exc.jobs:
            return
        if retries >= ctx.settings.max_retries:
            for job in exc.jobs:
                ctx.status.fail(
                    job.job_id, exc.cause.code, f"gave up after {retries + 1} tries: {exc.cause.message}"
                )
            return
        delay = compute_backoff(retries + 1, ctx.settings.retry_backoff_s, ctx.settings.retry_backoff_max_s)
        log.warning("storage unavailable; %d jobs retry in %.1f s", len(exc.jobs), delay)
        retry = build_message(exc.jobs[0].batch_id, [(j.index, j.spec) for j in exc.jobs])
        raise task.retry(kwargs=retry, countdown=delay, max_retries=ctx.settings.max_retries) from exc
    finally:
        ctx.leases.release(ctx.name, sorted(ctx.current))
        ctx.current, ctx.task_started = set(), None
