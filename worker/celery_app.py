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

from producer.keys import TASK_NAME, Keys
from producer.queue import make_celery
from producer.settings import Settings
from worker.check import HEARTBEAT_S
from worker.context import WorkerContext, get_context, set_context
from worker.tasks import run_jobs

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Celery:
    app = make_celery(settings)
    app.task(name=TASK_NAME, bind=True)(run_jobs)
    return app


class Heartbeat:
    """Touches the ready file and the worker's Redis key while the worker consumes."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self.thread.start()

    def beat(self) -> None:
        s = self.ctx.settings
        s.ready_file.parent.mkdir(parents=True, exist_ok=True)
        s.ready_file.write_text(json.dumps({"worker": self.ctx.name, "at": time.time()}))
        info = {"modes": [m.value for m in s.modes], "at": time.time(), "loads": dict(self.ctx.cache.loads)}
        try:
            self.ctx.redis.set(
                Keys(s.key_prefix).worker(self.ctx.name), json.dumps(info), ex=int(HEARTBEAT_S * 6)
            )
        except redis.RedisError as exc:
            log.warning("heartbeat to Redis failed: %s", exc)

    def _loop(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            self.beat()

    def stop(self) -> None:
        self.stopped.set()
        self.ctx.settings.ready_file.unlink(missing_ok=True)


_HEARTBEAT: Heartbeat | None = None


@worker_ready.connect
def _on_ready(**_: Any) -> None:
    global _HEARTBEAT
    _HEARTBEAT = Heartbeat(get_context())
    _HEARTBEAT.start()
    log.info("worker %s ready: %s", get_context().name, dict(get_context().cache.loads))


@worker_shutting_down.connect
def _on_shutdown(**_: Any) -> None:
    if _HEARTBEAT is not None:
        _HEARTBEAT.stop()


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
        _on_shutdown()
        set_context(None)
    return 0
