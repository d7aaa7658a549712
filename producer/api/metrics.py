"""Queue metrics at the API's `/metrics`: read from Redis at each scrape, in O(queues + tenants waiting + workers).

- `kandinsky_batch_queue_messages{queue,priority}`: messages waiting at each priority, on the
  queue's Celery lists and in its fair structures (kandinsky_batch/store/fair.py).
- `kandinsky_batch_queue_jobs{queue}`: jobs carried by those messages, every priority, from the
  store's counts of jobs carried towards and off each list (a re-sent job, such as a retry, is a
  message only), and never fewer than the messages (an outside sender's message is not counted
  by jobs). KEDA scales on it.
- `kandinsky_batch_jobs_in_flight{queue}` and `kandinsky_batch_busy_workers{queue}`: from the
  live workers' heartbeats, each busy worker under the queue of the task it runs.
- `kandinsky_batch_oldest_queued_seconds{queue}`: the age of the oldest job at the head of a
  waiting message: on a Celery list, or first in a tenant's fair queue (its creation; a re-sent
  message shows its job's first submit).
- `kandinsky_batch_dead_letters`, `kandinsky_batch_webhook_deliveries_pending`.

Every API process exports the same values: aggregate them across processes with max().
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kandinsky_batch.envelope import call_kwargs
from kandinsky_batch.errors import BadMessage
from kandinsky_batch.keys import TASK_NAME, JobField, JobRef, QueueCount, queue_list_of
from kandinsky_batch.schema import Mode, Priority
from kandinsky_batch.settings import Settings
from kandinsky_batch.store import records
from kandinsky_batch.store.fair import FairQueues, list_priority
from kandinsky_batch.store.reads import StatusReader
from kandinsky_batch.wire import parse_message


class QueueCollector(Collector):
    def __init__(self, settings: Settings, reader: StatusReader) -> None:
        self.queues = [settings.queue_for(mode) for mode in Mode]
        self.reader = reader
        self.fair = FairQueues(reader.redis, reader.keys)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        redis, keys = self.reader.redis, self.reader.keys
        pipe = redis.pipeline(transaction=False)
        pipe.hgetall(keys.queue_counts())
        pipe.llen(keys.dead_letters())
        pipe.zcard(keys.webhook_due())
        counts_raw, dead, pending = pipe.execute()
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
        for queue in self.queues:
            waiting = self.fair.waiting(queue)
            carried = 0
            for priority in Priority:
                messages.add_metric([queue, priority.value], waiting[priority])
                name = queue_list_of(queue, priority)
                added = counts.get(QueueCount.ADDED.of(name), 0) - counts.get(QueueCount.TAKEN.of(name), 0)
                carried += max(added, waiting[priority]) if waiting[priority] else 0
            jobs.add_metric([queue], carried)
            created = [c for c in self._created(self._heads(queue)) if c is not None]
            oldest.add_metric([queue], max((max(0.0, now - c) for c in created), default=0.0))
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

    def _heads(self, queue: str) -> list[bytes]:
        """The oldest waiting message of each Celery list and of each tenant's fair queue."""
        pipe = self.reader.redis.pipeline(transaction=False)
        for name in list_priority(queue):
            pipe.lindex(name, -1)  # lists are pushed on the left
        found = [head for head in pipe.execute() if head is not None]
        for priority in Priority:
            found += self.fair.heads(queue, priority)
        return found

    def _created(self, envelopes: list[bytes]) -> list[float | None]:
        """When the first job of each queued message was created; None for a message not ours."""
        refs = [_first_job(envelope) for envelope in envelopes]
        known = [ref for ref in refs if ref is not None]
        pipe = self.reader.redis.pipeline(transaction=False)
        for ref in known:
            start = records.byte_offset(ref.index)
            pipe.hget(self.reader.keys.job(ref), JobField.CREATED)
            pipe.getrange(
                self.reader.keys.records(ref.batch_id, records.shard_of(ref.index)), start, start + 8
            )
        replies = pipe.execute() if known else []
        created: dict[JobRef, float | None] = {}
        for n, ref in enumerate(known):
            on_hash, packed = replies[2 * n], replies[2 * n + 1]
            record = records.decode(packed)
            created[ref] = float(on_hash) if on_hash else float(record.created) if record else None
        return [None if ref is None else created[ref] for ref in refs]


def _first_job(envelope: bytes) -> JobRef | None:
    message = call_kwargs(envelope, TASK_NAME)
    if message is None:
        return None
    try:
        parsed = parse_message(message)
        return JobRef(parsed.batch_id, parsed.entries[0].index)
    except (BadMessage, IndexError, ValueError, TypeError, KeyError):
        return None
