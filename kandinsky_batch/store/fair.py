"""Weighted fair share between tenants inside each queue: the fair structures, fed to Celery.

A submit does not push its messages onto the queue's Celery list: it queues them behind its
tenant's others in the store's fair structure of the queue and priority (`Keys.fair`; jobs sent
without a tenant belong to `NO_TENANT`). Each Celery list is kept `FEED_DEPTH` messages deep by a
feed, in fair-share order: weighted fair queueing by images, where each tenant has a virtual time
that grows by the images it is served divided by its weight (`Keys.weights`, 1 by default) and
the tenant furthest behind is served next; a tenant coming back from idle starts at the clock,
or where it left off if that is later. So a tenant with one job waits about one micro-batch,
whatever the others have queued, and tenants share each queue in proportion to their weights.
Within a tenant, messages keep their order.

The feed runs in the script that queues a message (so an idle worker starts at once), after a
worker takes messages (`feed.lua`, and `take.lua` itself), and in every reaper pass. A worker
filling its micro-batch takes straight from the structures in the same order, and only while the
next message fits the room left (store/taken.py): one taken that does not fit goes back to the
front of the Celery list, ahead of every tenant.
Priorities stay strict: each has its own Celery list and structure, and workers take every
`high` list and structure of their queues before any `normal` one, and `normal` before `low`.

Outside senders may still push a message straight onto a Celery list (docs/message-format.md).
A reaper moves such a message into the fair share of `NO_TENANT` (`adopt`), at the priority its
kombu priority says, marked with `TENANT_HEADER` so it is moved once; one that a worker pops
first simply runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import redis

from kandinsky_batch.broker import kombu_priority, priority_from_kombu
from kandinsky_batch.envelope import call_kwargs
from kandinsky_batch.errors import BadMessage
from kandinsky_batch.keys import (
    NO_TENANT,
    TASK_NAME,
    TENANT_HEADER,
    FairField,
    Keys,
    legacy_lists,
    queue_list_of,
    queue_lists,
)
from kandinsky_batch.schema import Priority
from kandinsky_batch.store import scripts
from kandinsky_batch.wire import parse_message

ADOPT_PER_PASS = 100  # messages of each list looked at per reaper pass, from the end workers pop
HEADS_MAX = 100  # waiting tenants whose oldest message the queue metrics read, per structure


def list_priority(queue: str) -> dict[str, Priority]:
    """Each list of `queue` that may hold messages, and their priority: a priority's own Celery
    list; the list no priority of ours is fed onto (kombu priorities 6 to 8): normal; the low
    list of versions before the fair share (`legacy_lists`, adopted from): low."""
    ours = {queue_list_of(queue, p): p for p in Priority}
    found = {name: ours.get(name, Priority.NORMAL) for name in queue_lists(queue)}
    return found | {name: Priority.LOW for name in legacy_lists(queue)}


def fair_keys(keys: Keys, queue: str, first: Priority) -> tuple[list[str], list[str]]:
    """The Celery lists and the fair structures of `queue`, those of priority `first` first."""
    order = [first, *(p for p in Priority if p is not first)]
    fed = queue_list_of(queue, first)
    return [fed, *(n for n in list_priority(queue) if n != fed)], [keys.fair(queue, p) for p in order]


def take_sources(keys: Keys, queue: str) -> list[str]:
    """`take.lua`'s pairs for `queue`: each source and the list its messages go back to, in the
    order a worker takes them (a priority's lists, then its structure; high first)."""
    pairs: list[str] = []
    by_priority = list_priority(queue)
    for priority in Priority:
        for name, of in by_priority.items():
            if of is priority:
                pairs += [name, name]
        pairs += [keys.fair(queue, priority), queue_list_of(queue, priority)]
    return pairs


def feed_pairs(keys: Keys, queues: Iterable[str]) -> list[str]:
    """`feed.lua`'s pairs: each Celery list our messages are fed onto, and its structure."""
    return [name for q in queues for p in Priority for name in (queue_list_of(q, p), keys.fair(q, p))]


def message_images(kwargs: object) -> int:
    """The images a message's jobs ask for (what the fair share charges), 1 for each it cannot tell."""
    try:
        parsed = parse_message(kwargs)
    except BadMessage:
        return 1
    total = 0
    for entry in parsed.entries:
        n = (entry.data or {}).get("num_images", 1)
        total += n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 64 else 1
    return max(1, total)


def adoptable(raw: bytes) -> tuple[str, Priority, int] | None:
    """An outside sender's message, marked as ours, with its priority and images; None for one of
    ours (already marked) and for anything that is not a task message (a worker drops those)."""
    kwargs = call_kwargs(raw, TASK_NAME)
    if kwargs is None:
        return None
    item = json.loads(raw)
    if TENANT_HEADER in item["headers"]:
        return None
    priority = priority_from_kombu(item["properties"].get("priority"))
    item["headers"][TENANT_HEADER] = NO_TENANT
    item["properties"]["priority"] = kombu_priority(priority)
    envelope = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
    return envelope, priority, message_images(kwargs)


class FairQueues:
    """Feeding, counting and adopting into the fair structures (see the module's docstring)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        self._feed = client.register_script(scripts.lua("feed"))
        self._adopt = client.register_script(scripts.lua("adopt"))

    def feed(self, queues: Iterable[str]) -> int:
        """Fill each Celery list of `queues` from its structure, up to FEED_DEPTH; how many went."""
        pairs = feed_pairs(self.keys, queues)
        return int(self._feed(keys=[self.keys.weights(), *pairs])) if pairs else 0

    def waiting(self, queue: str) -> dict[Priority, int]:
        """Messages waiting at each priority of `queue`: on its Celery lists and in its structures."""
        by_list = list_priority(queue)
        pipe = self.redis.pipeline(transaction=False)
        for name in by_list:
            pipe.llen(name)
        for priority in Priority:
            pipe.hget(self.keys.fair_state(queue, priority), FairField.WAITING)
        replies = pipe.execute()
        found = {p: 0 for p in Priority}
        for priority, length in zip(by_list.values(), replies[: len(by_list)], strict=True):
            found[priority] += int(length)
        for priority, count in zip(Priority, replies[len(by_list) :], strict=True):
            found[priority] += max(0, int(count or 0))
        return found

    def heads(self, queue: str, priority: Priority) -> list[bytes]:
        """The envelope at the head of each waiting tenant's queue (its oldest message), for up to
        HEADS_MAX tenants, those to be served first first."""
        tenants: list[bytes] = self.redis.zrange(self.keys.fair(queue, priority), 0, HEADS_MAX - 1)  # type: ignore[assignment]
        pipe = self.redis.pipeline(transaction=False)
        for tenant in tenants:
            pipe.lindex(self.keys.fair_tenant(queue, priority, tenant.decode()), -1)
        entries = pipe.execute() if tenants else []
        return [entry.partition(b"\n")[2] for entry in entries if entry]

    def adopt(self, queues: Iterable[str]) -> int:
        """Move messages outside senders pushed onto the Celery lists of `queues` into the fair
        share of `NO_TENANT`; how many moved."""
        lists = [(queue, name) for queue in queues for name in list_priority(queue)]
        pipe = self.redis.pipeline(transaction=False)
        for _, name in lists:
            pipe.lrange(name, -ADOPT_PER_PASS, -1)
        moved = 0
        for (queue, name), found in zip(lists, pipe.execute(), strict=True):
            for raw in found:
                outside = adoptable(raw)
                if outside is not None:
                    envelope, priority, images = outside
                    keys = [name, self.keys.fair(queue, priority)]
                    moved += int(self._adopt(keys=keys, args=[raw, envelope, NO_TENANT, images]))
        return moved
