"""Every Redis key and Celery name, defined once for producers and workers.

Job ids derive from their batch (`{batch_id}-{index}`), so a batch's jobs can
be listed from its total alone and a job's batch is read from its id.
"""

from __future__ import annotations

TASK_NAME = "kandinsky_batch.run_jobs"
MESSAGE_VERSION = 1
MAX_INDEX = 10**9 - 1  # a job's index in its batch (a billion lines is past any real batch)

# Priorities ride on kombu's Redis priority lists: a queue's normal messages are the list named
# after it, its low-priority ones the list `{queue}:9`. Workers pop every normal list before
# any low one, so a big low-priority dataset never delays jobs sent at the normal priority.
PRIORITY_SEP = ":"
LOW_PRIORITY_STEP = 9


def queue_lists(queue: str) -> list[str]:
    """The Redis lists behind one Celery queue, normal priority first (what KEDA and backpressure count)."""
    return [queue, f"{queue}{PRIORITY_SEP}{LOW_PRIORITY_STEP}"]


def job_id(batch_id: str, index: int) -> str:
    return f"{batch_id}-{index}"


def split_job_id(job: str) -> tuple[str, int] | None:
    """`(batch_id, index)` for a job id, or None if it is not one."""
    batch, sep, index = job.rpartition("-")
    if not sep or not batch or not index.isdigit():
        return None
    return batch, int(index)


class Keys:
    """Redis key names under one prefix (so tests and tenants can share a Redis)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job(self, job: str) -> str:
        return f"{self.prefix}:job:{job}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def records_prefix(self, batch_id: str) -> str:
        return f"{self.prefix}:rec:{batch_id}:"

    def records(self, batch_id: str, shard: int) -> str:
        """String of packed records of the batch's not-yet-received jobs (producer/records.py)."""
        return f"{self.records_prefix(batch_id)}{shard}"

    def leases(self) -> str:
        """Sorted set: job id -> lease expiry (unix time)."""
        return f"{self.prefix}:leases"

    def owners(self) -> str:
        """Hash: job id -> the worker holding its lease."""
        return f"{self.prefix}:owners"

    def events(self) -> str:
        return f"{self.prefix}:events"

    def worker(self, name: str) -> str:
        return f"{self.prefix}:worker:{name}"

    def dead_letters(self) -> str:
        return f"{self.prefix}:dead"
