"""The Celery side of the contract: one app configuration for producers and workers.

The producer only sends by task name, so it never imports the worker (or torch).
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from kandinsky_batch.keys import KOMBU_PRIORITY, PRIORITY_SEP, PRIORITY_STEPS, TASK_NAME
from kandinsky_batch.redis_client import normalized
from kandinsky_batch.schema import Mode, Priority
from kandinsky_batch.settings import Settings

BRPOP_TIMEOUT_S = 10  # an idle worker's BRPOP returns empty this often; a message ends it at once
RESTORE_CHECK_S = 60  # kombu looks for unacked messages past the visibility timeout every 10th check


def make_celery(settings: Settings) -> Celery:
    """A Celery app for our Redis broker: JSON only, late acks, one job in flight."""
    # kombu takes the password only from the userinfo, so the same URL as the status store's works.
    app = Celery("kandinsky_batch", broker=normalized(settings.redis_url), set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        event_serializer="json",
        result_accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        # Enforced by prefork pools; our solo-pool workers also stop renewing a hung task's
        # leases after job_time_limit_s (see worker/celery_app.py), so the job is handed back.
        task_time_limit=settings.job_time_limit_s,
        task_soft_time_limit=int(settings.job_time_limit_s * 0.9),
        worker_concurrency=1,
        worker_soft_shutdown_timeout=settings.shutdown_grace_s,
        worker_enable_soft_shutdown_on_idle=False,
        worker_hijack_root_logger=False,
        # Task and worker events (a Redis PUBLISH each) and remote control (a pub/sub connection
        # per worker), so Flower shows workers and tasks and can inspect, revoke and shut down.
        worker_send_task_events=settings.celery_events,
        task_send_sent_event=settings.celery_events,
        worker_enable_remote_control=settings.celery_events,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu's own steps and separator, so a plain Celery client sending with any priority
            # files its message on a list workers read (kandinsky_batch/keys.py, queue_lists).
            "priority_steps": list(PRIORITY_STEPS),
            "sep": PRIORITY_SEP,
        },
        task_default_queue=settings.queue_for(Mode.TEXT2IMG),
        task_create_missing_queues=True,
        task_routes={TASK_NAME: {"queue": settings.queue_for(Mode.TEXT2IMG)}},
        enable_utc=True,
    )
    return app


def worker_transport_options(name: str) -> dict[str, Any]:
    """kombu's options for a worker's consumer, on top of `make_celery`'s: an idle worker's cost.

    An idle worker waits in one BRPOP on all its lists, which a message ends at once: it comes back
    empty every `BRPOP_TIMEOUT_S` (kombu's default is every second). Unacked messages older than
    the visibility timeout (hours) are looked for every ~10 minutes, not every ~100 s. `name` is
    the connections' `CLIENT SETNAME`. Producers and Flower keep kombu's defaults: for a client
    that drains events, `polling_interval` is also a sleep.
    """
    return {
        "polling_interval": BRPOP_TIMEOUT_S,
        "unacked_restore_interval": RESTORE_CHECK_S,
        "client_name": name,
    }


def kombu_priority(priority: Priority) -> int:
    """The kombu priority our messages of `priority` carry: its list is popped in step order."""
    return KOMBU_PRIORITY[priority.value]


def priority_from_kombu(value: object) -> Priority:
    """A message's priority from its kombu `priority` (None when sent without one).

    kombu pops its lowest step first, yet 0 is what a Celery client sends by default: so 0 stays
    normal, as it always was, 1 and 2 are high, 3 to 8 normal and 9 low.
    """
    if not isinstance(value, int) or isinstance(value, bool) or value == 0:
        return Priority.NORMAL
    if value < PRIORITY_STEPS[1]:
        return Priority.HIGH
    return Priority.LOW if value >= PRIORITY_STEPS[-1] else Priority.NORMAL
