"""The worker's heartbeat: renews the leases of the jobs in progress and shows the worker alive.

While serving (not stopping) it also touches the ready file that `worker check` reads. A task
that overran `job_time_limit_s` is treated as hung: the heartbeat stops, so the liveness probe
restarts the worker and the reaper hands its jobs back once their leases expire.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING

import redis

from worker.check import HEARTBEAT_S

if TYPE_CHECKING:
    from worker.context import WorkerContext

log = logging.getLogger(__name__)


class Heartbeat:
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
            log.error("the current task has run over %d s; no longer renewing its leases", s.job_time_limit_s)
            return
        if not ctx.shutdown.stopping:
            s.ready_file.parent.mkdir(parents=True, exist_ok=True)
            s.ready_file.write_text(json.dumps({"worker": ctx.name, "at": time.time()}))
        # `busy`, `queue` and `in_flight` feed the API's queue metrics (and so autoscaling).
        held = ctx.current | ctx.store_pool.pending()  # running, or generated and being stored
        info = {
            "modes": [m.value for m in s.modes],
            "at": time.time(),
            "loads": dict(ctx.cache.loads),
            "busy": bool(held),
            "queue": ctx.queue if held else "",
            "in_flight": len(held),
        }
        try:
            renewed, lost = ctx.leases.renew(ctx.name, sorted(held))
            if lost:
                # Expired while this worker was paused or cut off: the jobs may run elsewhere now.
                # The engine sees it at its next step or write, and stops writing for them.
                log.warning("lost %d leases (%d still held)", lost, renewed)
            if ctx.current:
                ctx.taken.renew(ctx.name)  # the messages taken to fill this task's micro-batch
            ctx.status.heartbeat(ctx.name, info, ttl_s=int(HEARTBEAT_S * 6))
        except redis.RedisError as exc:
            log.warning("heartbeat to Redis failed: %s", exc)

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            self.beat()
