"""The worker process: warm up, then serve the queues of its modes with a solo Celery pool.

Weights load before Celery starts consuming, so a worker never takes a job it
cannot run yet; the ready file appears only once it consumes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready, worker_shutting_down

from producer.keys import TASK_NAME
from producer.queue import make_celery
from producer.settings import Settings
from worker import guards
from worker.check import HEARTBEAT_S
from worker.context import WorkerContext, get_context, set_context
from worker.delivery import Reaper
from worker.tasks import run_jobs

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Celery:
    guards.install()
    app = make_celery(settings)
    app.task(name=TASK_NAME, bind=True, Strategy="worker.guards:checked_strategy")(run_jobs)
    return app


class Heartbeat:
    """Renews the leases of the jobs in progress, and shows the worker alive and (if serving) ready."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.interval = min(HEARTBEAT_S, ctx.settings.lease_ttl_s / 3)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self.thread.start()

    def beat(self) -> None:
        ctx, s = self.ctx, self.ctx.settings
        if ctx.overran():
            # A hung task: stop looking alive, so the liveness probe restarts the worker
            # and the reaper hands its jobs back once their leases expire.
            log.error("the current task has run over %d s; no longer renewing its leases", s.job_time_limit_s)
            return
        if ctx.stopping_since is None:
            s.ready_file.parent.mkdir(parents=True, exist_ok=True)
            s.ready_file.write_text(json.dumps({"worker": ctx.name, "at": time.time()}))
        info = {"modes": [m.value for m in s.modes], "at": time.time(), "loads": dict(ctx.cache.loads)}
        try:
            ctx.leases.renew(ctx.name, sorted(ctx.current))
            ctx.redis.set(ctx.keys.worker(ctx.name), json.dumps(info), ex=int(HEARTBEAT_S * 6))
        except redis.RedisError as exc:
            log.warning("heartbeat to Redis failed: %s", exc)

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            self.beat()


_THREADS: dict[str, Any] = {}


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    ctx = get_context()
    _THREADS["heartbeat"] = Heartbeat(ctx)
    _THREADS["heartbeat"].start()
    _THREADS["reaper"] = Reaper(ctx, sender.app if sender is not None else create_app(ctx.settings))
    _THREADS["reaper"].thread.start()
    log.info("worker %s ready: %s", ctx.name, dict(ctx.cache.loads))


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    """SIGTERM: stop looking ready, keep renewing leases, finish or hand back within the grace period."""
    ctx = get_context()
    ctx.begin_shutdown()
    ctx.settings.ready_file.unlink(missing_ok=True)
    log.warning("shutting down: %.0f s to finish the current micro-batch", ctx.settings.shutdown_grace_s)


def serve(settings: Settings, loglevel: str = "INFO") -> int:
    """Run a worker until it is told to stop (SIGTERM: finish the current job first)."""
    logging.basicConfig(level=loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx = WorkerContext.build(settings)
    set_context(ctx)
    app = create_app(settings)
    queues = ",".join(settings.queue_for(m) for m in settings.modes)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=solo",
                "--concurrency=1",
                f"--queues={queues}",
                f"--hostname={ctx.name.replace(':', '-')}@%h",
                f"--loglevel={loglevel}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        for thread in _THREADS.values():
            thread.stopped.set()
        settings.ready_file.unlink(missing_ok=True)
        set_context(None)
    return 0
