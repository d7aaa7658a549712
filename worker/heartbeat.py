"""The worker's heartbeat: renews the leases of the jobs in progress and shows the worker alive.

While serving (not stopping) it also touches the ready file that `worker check` reads. A task
that overran `job_time_limit_s` is treated as hung: the heartbeat stops, so the liveness probe
restarts the worker and the reaper hands its jobs back once their leases expire.

What it shows in Redis (`busy`, `queue`, `in_flight`, read by the API's queue metrics) is written
at every beat while the worker holds jobs, and at once when that changes. An idle worker holds no
lease and says the same thing at every beat, so it writes only every `IDLE_SHOW_S`, with a longer
expiry: an idle worker costs Redis about one command every 10 s here.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from worker.check import HEARTBEAT_S

if TYPE_CHECKING:
    from worker.context import WorkerContext

log = logging.getLogger(__name__)
IDLE_SHOW_S = 30.0  # how often an idle worker's unchanged heartbeat is written again
BUSY_TTL_S = int(HEARTBEAT_S * 6)  # a busy worker's heartbeat expires unless renewed
IDLE_TTL_S = int(IDLE_SHOW_S * 3)


class Heartbeat:
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.interval = min(HEARTBEAT_S, ctx.settings.lease_ttl_s / 3)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._lock = threading.Lock()  # the task's thread beats too, at a task's start
        self._shown: dict[str, Any] | None = None  # what the last write said, less its time
        self._shown_at = float("-inf")  # monotonic

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
        said = {
            "modes": [m.value for m in s.modes],
            "loads": dict(ctx.cache.loads),
            "busy": bool(held),
            "queue": ctx.queue if held else "",
            "in_flight": len(held),
        }
        with self._lock:
            try:
                renewed, lost = ctx.leases.renew(ctx.name, sorted(held))
                if lost:
                    # Expired while this worker was paused or cut off: the jobs may run elsewhere now.
                    # The engine sees it at its next step or write, and stops writing for them.
                    log.warning("lost %d leases (%d still held)", lost, renewed)
                if ctx.current:
                    ctx.taken.renew(ctx.name)  # the messages taken to fill this task's micro-batch
                if held or said != self._shown or time.monotonic() - self._shown_at >= IDLE_SHOW_S:
                    ttl = BUSY_TTL_S if held else IDLE_TTL_S
                    ctx.status.heartbeat(ctx.name, {**said, "at": time.time()}, ttl_s=ttl)
                    self._shown, self._shown_at = said, time.monotonic()
            except redis.RedisError as exc:
                log.warning("heartbeat to Redis failed: %s", exc)

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            self.beat()
