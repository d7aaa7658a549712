"""The worker process: warm up, then serve the queues of its modes with a solo Celery pool.

Weights load before Celery starts consuming, so a worker never takes a job it
cannot run yet; the ready file appears only once it consumes.

Logging is set up first (kandinsky_batch/logs.py), and only then are the modules that import
diffusers loaded, inside `serve` and the signal handlers: importing diffusers already logs, and
that line must come out in the chosen format too. Celery leaves the root logger alone
(`worker_hijack_root_logger=False`) and adds only its stdout redirect. With METRICS_PORT set,
/metrics is served from the end of the warm-up on.

A worker that cannot start (a model setting naming no model, Redis or storage unusable) logs one
error line saying why, in the chosen format, and exits 1: no traceback to read through.

What an idle worker costs Redis: with the default settings it holds at most 4 connections, all
named `kb-worker:<name>` (Celery's consumer: a BRPOP and one for acks; the worker's own threads
share one client capped at 2), and sends under one command a second. Celery's events, worker
heartbeats and remote control (`CELERY_EVENTS`, what Flower needs), gossip and mingle are off
unless their settings turn them on.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready, worker_shutting_down

from kandinsky_batch.broker import BRPOP_TIMEOUT_S, make_celery, worker_transport_options
from kandinsky_batch.errors import KandinskyBatchError
from kandinsky_batch.keys import TASK_NAME
from kandinsky_batch.logs import bind_process, setup_logging
from kandinsky_batch.redis_client import client_name, describe
from kandinsky_batch.schema import Mode
from kandinsky_batch.settings import Settings
from worker import guards, metrics
from worker.heartbeat import Heartbeat
from worker.library_logs import route_library_logs

log = logging.getLogger(__name__)


def create_app(settings: Settings, name: str) -> Celery:
    """The worker's Celery app: the shared configuration, and the consumer's options for `name`."""
    from worker.tasks import run_jobs

    guards.install(settings.queue_for(mode) for mode in Mode)
    app = make_celery(settings)
    options = app.conf.broker_transport_options
    app.conf.broker_transport_options = {**options, **worker_transport_options(client_name("worker", name))}
    app.task(name=TASK_NAME, bind=True)(run_jobs)
    return app


def celery_flags(settings: Settings) -> list[str]:
    """Celery's optional services, off unless a setting turns them on.

    Worker heartbeats are events (a PUBLISH every 2 s), sent with the task events for Flower.
    """
    return [
        *([] if settings.celery_gossip else ["--without-gossip"]),
        *([] if settings.celery_mingle else ["--without-mingle"]),
        *([] if settings.celery_events else ["--without-heartbeat"]),
    ]


class ConsumerWake:
    """At SIGTERM, ends the idle consumer's BRPOP at once (`CLIENT UNBLOCK`): kombu reads a pending
    BRPOP's answer before it closes, so an idle worker would otherwise exit up to BRPOP_TIMEOUT_S
    late. The BRPOP answers as if it had timed out, or with a message that arrived meanwhile,
    which Celery hands back as usual. A thread of its own: the signal handler only sets an event.
    """

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.client = client
        self.name = name  # the consumer's connections' CLIENT SETNAME
        self.requested = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="consumer-wake", daemon=True)

    def _run(self) -> None:
        self.requested.wait()
        if self.stopped.is_set():
            return
        try:
            for client in self.client.client_list(_type="normal"):
                if client.get("name") == self.name and client.get("cmd") == "brpop":
                    self.client.client_unblock(int(client["id"]))
        except redis.RedisError as exc:  # no CLIENT rights: the BRPOP ends by itself
            log.info(
                "could not end the consumer's wait at once (%s); it ends within %d s", exc, BRPOP_TIMEOUT_S
            )


_THREADS: dict[str, Any] = {}


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    from worker.context import get_context
    from worker.reaper import Reaper

    ctx = get_context()
    _THREADS["heartbeat"] = Heartbeat(ctx)
    _THREADS["heartbeat"].start()
    ctx.beat = _THREADS["heartbeat"].beat
    _THREADS["reaper"] = Reaper(
        ctx.delivery, ctx.taken, busy=lambda: bool(ctx.current or ctx.store_pool.pending())
    )
    _THREADS["reaper"].thread.start()
    _THREADS["wake"] = ConsumerWake(ctx.redis, client_name("worker", ctx.name))
    _THREADS["wake"].thread.start()
    log.info("worker %s ready: %s", ctx.name, dict(ctx.cache.loads))


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    """SIGTERM: stop looking ready, keep renewing leases, finish or hand back within the grace period."""
    from worker.context import get_context

    ctx = get_context()
    ctx.shutdown.begin()
    ctx.settings.ready_file.unlink(missing_ok=True)
    if "wake" in _THREADS:
        _THREADS["wake"].requested.set()
    log.warning("shutting down: %.0f s to finish the current micro-batch", ctx.settings.shutdown_grace_s)


def _finish_storing(ctx: Any) -> None:
    """Uploads still in the background finish (or go back) while the heartbeat keeps their leases."""
    try:
        ctx.delivery.finish_storing()
    except Exception:  # Redis gone too: the leases expire and a reaper hands the jobs back
        log.exception("could not finish or hand back the jobs still storing")


def serve(settings: Settings, loglevel: str = "INFO") -> int:
    """Run a worker until it is told to stop (SIGTERM: finish the current job first)."""
    fmt = setup_logging(settings.log_format, loglevel)
    route_library_logs()
    from worker.context import WorkerContext, set_context, worker_name  # imports diffusers: after the above

    bind_process(worker=worker_name(settings))
    try:
        ctx = WorkerContext.build(settings)
    except redis.RedisError as exc:
        log.error("the worker cannot start: %s", describe(exc, settings.redis_url))
        return 1
    except KandinskyBatchError as exc:
        log.error("the worker cannot start: %s", exc.message)
        return 1
    set_context(ctx)
    app = create_app(settings, ctx.name)
    queues = ",".join(settings.queue_for(m) for m in settings.modes)
    metrics.describe_worker(ctx.name, settings.modes, ctx.cache.device, ctx.cache.dtype)
    metrics.watch_gpu(ctx.cache.device)
    server = (
        metrics.MetricsServer(settings.metrics_host, settings.metrics_port) if settings.metrics_port else None
    )
    try:
        app.worker_main(
            [
                *(["--quiet"] if fmt == "json" else []),  # no banner: every line on stdout is JSON
                "worker",
                "--pool=solo",
                "--concurrency=1",
                f"--queues={queues}",
                f"--hostname={ctx.name.replace(':', '-')}@%h",
                f"--loglevel={loglevel}",
                *celery_flags(settings),
            ]
        )
    finally:
        _finish_storing(ctx)
        for thread in _THREADS.values():
            thread.stopped.set()
        if server is not None:
            server.stop()
        settings.ready_file.unlink(missing_ok=True)
        set_context(None)
    return 0
