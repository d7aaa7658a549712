"""The reaper thread: what every worker does for the whole system, in the background.

Each pass queues the delayed re-sends that are due, moves messages outside senders pushed straight
onto a Celery list into the fair share, and feeds every queue's Celery lists from its fair
structures (kandinsky_batch/store/fair.py); every half lease TTL it also hands back what dead
workers held (`Delivery.reap_once`) and returns the messages they took.

A pass first asks, in one EXISTS, whether any key it works on holds anything: the queues' lists
and fair structures, the delayed re-sends, the leases, the running jobs and the taken messages.
On an idle system none does, and the pass is that one command. Otherwise one more round trip
says which of the three moves has work, and only those run; each would have changed nothing
without it. Passes come every second while this worker holds jobs or the last pass found work,
as they always did, and every `IDLE_INTERVAL_S` otherwise (sooner when a delayed re-send falls
due, never less often than every half lease TTL). So an idle system hears from an idle worker's
reaper once every few seconds, and anything a reaper must do is still done within seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kandinsky_batch.schema import Mode, Priority
from kandinsky_batch.store.fair import list_priority
from kandinsky_batch.store.taken import TakenStore
from worker.delivery import Delivery

log = logging.getLogger(__name__)
BUSY_INTERVAL_S = 1.0  # between passes while this worker holds jobs, or after a pass that did work
IDLE_INTERVAL_S = 5.0  # between passes otherwise
SOONEST_S = 0.05  # the shortest wait, for a delayed re-send about to fall due


class Reaper:
    def __init__(self, delivery: Delivery, taken: TakenStore, busy: Callable[[], bool]) -> None:
        self.delivery = delivery
        self.taken = taken
        self.busy = busy  # whether this worker holds jobs (running or being stored)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="reaper", daemon=True)
        status = delivery.status
        keys = status.keys
        self.queues = [delivery.settings.queue_for(mode) for mode in Mode]
        self.lists = [name for queue in self.queues for name in list_priority(queue)]
        self.structures = [keys.fair(queue, p) for queue in self.queues for p in Priority]
        self.reaped = [keys.leases(), keys.running(), keys.taking()]
        self.watched = [*self.lists, *self.structures, keys.delayed(), *self.reaped]
        self.reap_every = delivery.settings.lease_ttl_s / 2
        self.idle_interval = min(IDLE_INTERVAL_S, self.reap_every)
        self._last_reap = time.monotonic()

    def _loop(self) -> None:
        wait = BUSY_INTERVAL_S
        while not self.stopped.wait(wait):
            try:
                wait = self.run_once()
            except Exception:  # a Redis blip must not kill the thread
                log.exception("reaper pass failed")
                wait = BUSY_INTERVAL_S

    def run_once(self) -> float:
        """One pass; how long to wait before the next."""
        status = self.delivery.status
        worked, due = False, None
        if status.redis.exists(*self.watched):
            worked, due = self._work()
        elif time.monotonic() - self._last_reap >= self.reap_every:
            self._last_reap = time.monotonic()  # no lease, running job or taken message: nothing to reap
        wait = BUSY_INTERVAL_S if worked or self.busy() else self.idle_interval
        if due is not None:
            wait = min(wait, max(SOONEST_S, due - time.time()))
        return wait

    def _work(self) -> tuple[bool, float | None]:
        """The moves that have work; whether any changed something, and when the next re-send is due."""
        status = self.delivery.status
        pipe = status.redis.pipeline(transaction=False)
        pipe.exists(*self.lists)
        pipe.exists(*self.structures)
        pipe.zrange(status.keys.delayed(), 0, 0, withscores=True)
        lists, structures, first = pipe.execute()
        due = float(first[0][1]) if first else None
        done = 0
        if due is not None and due <= time.time():
            done += status.release_due()
            due = None  # the next one is read at the next pass
        if lists:
            adopted = status.fair.adopt(self.queues)
            if adopted:
                log.info("moved %d messages sent straight onto a queue into the fair share", adopted)
            done += adopted
            structures = structures or adopted
        if structures:
            done += status.fair.feed(self.queues)
        if time.monotonic() - self._last_reap >= self.reap_every:
            self._last_reap = time.monotonic()
            done += self.delivery.reap_once()
            returned = self.taken.return_expired()
            if returned:
                log.warning("returned %d taken messages of dead workers to their queues", returned)
            done += returned
        return done > 0, due
