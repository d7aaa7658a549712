"""Queue metrics at the API's `/metrics`: read from Redis at each scrape, in O(queues + workers).

- `kandinsky_batch_queue_messages{queue,priority}`: messages waiting on each list (LLEN).
- `kandinsky_batch_queue_jobs{queue}`: jobs carried by those messages, from the store's
  counts of jobs carried onto and off each list (a re-sent job, such as a retry, is a message
  only).
- `kandinsky_batch_jobs_in_flight{queue}` and `kandinsky_batch_busy_workers{queue}`: from the
  live workers' heartbeats, each busy worker under the queue of the task it runs.
- `kandinsky_batch_oldest_queued_seconds{queue}`: the age of the job at the head of the
  oldest waiting message (its creation; a re-sent message shows its job's first submit).
- `kandinsky_batch_dead_letters`, `kandinsky_batch_webhook_deliveries_pending`.

Every API process exports the same values: aggregate them across processes with max().
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kandinsky_batch.envelope import call_kwargs
from kandinsky_batch.errors import BadMessage, NotFound
from kandinsky_batch.keys import TASK_NAME, JobRef, QueueCount, queue_lists
from kandinsky_batch.schema import Mode, Priority
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.reads import StatusReader
from kandinsky_batch.wire import parse_message

PRIORITIES = (Priority.NORMAL, Priority.LOW)  # the order of `queue_lists`


class QueueCollector(Collector):
    def __init__(self, settings: Settings, reader: StatusReader) -> None:
        self.queues = [settings.queue_for(mode) for mode in Mode]
        self.reader = reader

    def collect(self) -> Iterator[GaugeMetricFamily]:
        redis, keys = self.reader.redis, self.reader.keys
        pipe = redis.pipeline(transaction=False)
        for queue in self.queues:
            for name in queue_lists(queue):
                pipe.llen(name)
                pipe.lindex(name, -1)  # the oldest message: lists are pushed on the left
        pipe.hgetall(keys.queue_counts())
        pipe.llen(keys.dead_letters())
        pipe.zcard(keys.webhook_due())
        *per_list, counts_raw, dead, pending = pipe.execute()
        counts = {k.decode(): int(v) for k, v in counts_raw.items()}
        workers = self.reader.live_workers()

        messages = GaugeMetricFamily(
            "kandinsky_batch_queue_messages", "Messages waiting on a queue.", labels=["queue", "priority"]
        )
        jobs = GaugeMetricFamily(
            "kandinsky_batch_queue_jobs", "Jobs carried by waiting messages.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "kandinsky_batch_oldest_queued_seconds", "Age of the oldest waiting job.", labels=["queue"]
        )
        in_flight = GaugeMetricFamily(
            "kandinsky_batch_jobs_in_flight", "Jobs leased or running on workers.", labels=["queue"]
        )
        busy = GaugeMetricFamily(
            "kandinsky_batch_busy_workers", "Workers running a task of the queue.", labels=["queue"]
        )
        now = time.time()
        for q, queue in enumerate(self.queues):
            waiting, ages = 0, []
            for p, (name, priority) in enumerate(zip(queue_lists(queue), PRIORITIES, strict=True)):
                length, head = per_list[4 * q + 2 * p], per_list[4 * q + 2 * p + 1]
                messages.add_metric([queue, priority.value], length)
                added = counts.get(QueueCount.ADDED.of(name), 0)
                waiting += max(0, added - counts.get(QueueCount.TAKEN.of(name), 0)) if length else 0
                created = self._created(head) if head is not None else None
                if created is not None:
                    ages.append(max(0.0, now - created))
            jobs.add_metric([queue], waiting)
            oldest.add_metric([queue], max(ages, default=0.0))
            held = [w for w in workers.values() if w.get("busy") and w.get("queue") == queue]
            in_flight.add_metric([queue], sum(int(w.get("in_flight") or 0) for w in held))
            busy.add_metric([queue], len(held))
        yield from (messages, jobs, oldest, in_flight, busy)
        yield GaugeMetricFamily(
            "kandinsky_batch_dead_letters", "Jobs failed as attempts_exhausted.", value=dead
        )
        yield GaugeMetricFamily(
            "kandinsky_batch_webhook_deliveries_pending", "Webhook deliveries not yet taken.", value=pending
        )

    def _created(self, envelope: bytes) -> float | None:
        """When the first job of a queued message was created; None for a message not ours."""
        message = call_kwargs(envelope, TASK_NAME)
        if message is None:
            return None
        try:
            parsed = parse_message(message)
            ref = JobRef(parsed.batch_id, parsed.entries[0].index)
            return self.reader.job(ref).created_at
        except (BadMessage, NotFound, IndexError, ValueError, TypeError, KeyError):
            return None
