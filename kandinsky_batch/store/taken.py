"""Messages a worker takes off its queue beside Celery's one, to fill a micro-batch.

Taking moves a message from its Celery list, or from its tenant's fair structure in fair-share
order (store/fair.py), into the worker's `taken` hash under a lease that the heartbeat renews,
in one script: a worker killed at any instant loses no message. When the task ends the entries
are dropped (its jobs are finished, failed or re-sent by then); on shutdown they go back to
their lists; a reaper returns those of a worker whose lease ran out. A message goes back to the
end of the Celery list that workers pop first: it was charged to its tenant when it was taken.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis

from kandinsky_batch.keys import Keys
from kandinsky_batch.store import scripts
from kandinsky_batch.store.fair import take_sources

NO_ROOM_LIMIT = 2**31  # images: a take that only counts messages


@dataclass(frozen=True)
class Taken:
    """One taken message: its entry in the worker's hash, the list it came from, its bytes."""

    entry: str
    queue_list: str
    message: bytes


class TakenStore:
    def __init__(self, client: redis.Redis, keys: Keys, ttl_s: float) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._take = client.register_script(scripts.lua("take"))
        self._return = client.register_script(scripts.lua("take_return"))
        self._renew = client.register_script(scripts.lua("take_renew"))

    def take(self, worker: str, queue: str, most: int = 1, room: int | None = None) -> list[Taken]:
        """Up to `most` messages of `queue`, in the order workers are served them (high priority
        first; within one, by fair share), leased to `worker`; from the fair structures, only while
        the next message's images fit `room` (by default, any)."""
        keys = [
            self.keys.taken(worker),
            self.keys.taking(),
            self.keys.weights(),
            *take_sources(self.keys, queue),
        ]
        got = self._take(
            keys=keys,
            args=[
                worker,
                time.time() + self.ttl_s,
                most,
                uuid.uuid4().hex,
                NO_ROOM_LIMIT if room is None else room,
            ],
        )
        return [Taken(got[i + 2].decode(), got[i].decode(), got[i + 1]) for i in range(0, len(got), 3)]

    def put_back(self, worker: str, entry: str) -> bool:
        """Return one taken message to the front of its list (it did not fit the micro-batch)."""
        keys = [self.keys.taken(worker), self.keys.taking()]
        return int(self._return(keys=keys, args=[worker, "", entry])) == 1

    def give_back(self, worker: str) -> int:
        """Return every message `worker` took (it is shutting down); how many went back."""
        keys = [self.keys.taken(worker), self.keys.taking()]
        return int(self._return(keys=keys, args=[worker, "", ""]))

    def drop(self, worker: str) -> None:
        """Forget what `worker` took: its task has finished, failed or re-sent every job in it."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.taken(worker))
        pipe.zrem(self.keys.taking(), worker)
        pipe.execute()

    def renew(self, worker: str) -> bool:
        """Extend `worker`'s lease on what it took, unless that lease has run out already."""
        now = time.time()
        return bool(self._renew(keys=[self.keys.taking()], args=[worker, now, now + self.ttl_s]))

    def return_expired(self, limit: int = 100) -> int:
        """Return the messages of every worker whose lease ran out; how many went back."""
        raw = self.redis.zrangebyscore(self.keys.taking(), "-inf", time.time(), start=0, num=limit)
        returned = 0
        for worker in [w.decode() for w in raw]:  # type: ignore[union-attr]
            keys = [self.keys.taken(worker), self.keys.taking()]
            returned += max(0, int(self._return(keys=keys, args=[worker, time.time(), ""])))
        return returned
