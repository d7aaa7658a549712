"""What one worker process holds: settings, connections, warm pipelines, and its parts, built once.

Each part is given what it uses when it is built, in dependency order: the stores, then the
shutdown clock, the log fields and the storing pool, then delivery (claim, recover, reap, retry),
then the engine (which hands delivery the jobs a storage outage gave back), then the gatherer.
Nothing is wired in after the fact.

Every part shares one Redis client: it is thread-safe, and its pool is capped at
`STATUS_CONNECTIONS`, so the task, the storing thread, the heartbeat and the reaper together hold
at most that many connections (a call waits a moment for one rather than opening another).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from kandinsky_batch.keys import Keys
from kandinsky_batch.manifest import BatchDone, manifest_writer
from kandinsky_batch.redis_client import REFUSED, client_name, connect, describe, ping_once
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage, open_storage
from kandinsky_batch.store.status import StatusStore
from kandinsky_batch.store.taken import TakenStore
from worker.delivery import Delivery
from worker.engine import Engine
from worker.gather import Gatherer
from worker.jobs import JobLog
from worker.leases import LeaseStore
from worker.pipelines import PipelineCache
from worker.shutdown import Shutdown
from worker.store_pool import StorePool

log = logging.getLogger(__name__)
STATUS_CONNECTIONS = 2  # the worker's own Redis connections; Celery's consumer holds two more


@dataclass
class WorkerContext:
    settings: Settings
    name: str
    redis: redis.Redis
    keys: Keys
    status: StatusStore
    leases: LeaseStore
    taken: TakenStore  # messages taken beside Celery's one, to fill micro-batches
    storage: Storage
    cache: PipelineCache
    shutdown: Shutdown
    job_log: JobLog
    store_pool: StorePool  # micro-batches being stored in the background
    on_batch_done: BatchDone  # writes the manifest of a batch this worker saw finish
    delivery: Delivery
    engine: Engine
    gatherer: Gatherer
    current: set[str] = field(default_factory=set)  # job ids leased by the task in progress
    queue: str = ""  # the queue of the last task (its jobs may still be storing)
    beat: Callable[[], None] | None = None  # the heartbeat, to be seen busy at once
    task_started: float | None = None  # monotonic start of the task in progress

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        """Connect, check storage and warm the pipelines: a worker that cannot work fails here."""
        name = worker_name(settings)
        cache = PipelineCache(settings)
        cache.check_sources(list(settings.modes))  # a wrong model path is told before any wait on Redis
        client = connect(
            settings.redis_url, name=client_name("worker", name), max_connections=STATUS_CONNECTIONS
        )
        try:
            ping_once(settings.redis_url)
        except REFUSED:
            raise
        except redis.RedisError as exc:  # said at once; the client's retries then wait for Redis to come up
            log.warning("%s; retrying for about 40 s", describe(exc, settings.redis_url))
        client.ping()
        keys = Keys(settings.key_prefix)
        status = StatusStore(client, keys, settings.job_ttl_s)
        leases = LeaseStore(client, keys, settings.lease_ttl_s)
        taken = TakenStore(client, keys, settings.lease_ttl_s)
        storage = open_storage(settings)
        storage.check()
        cache.warm(list(settings.modes))
        shutdown = Shutdown(settings.shutdown_grace_s)
        job_log = JobLog()
        store_pool = StorePool(settings.max_pending_images)
        on_batch_done = manifest_writer(status, storage)
        delivery = Delivery(
            settings, name, status, leases, job_log, store_pool, shutdown.deadline, on_batch_done
        )
        engine = Engine(
            settings,
            cache,
            storage,
            status,
            name,
            leases=leases,
            stop_deadline=shutdown.deadline,
            on_storage_failure=delivery.retry_later,
            on_batch_done=on_batch_done,
            store_pool=store_pool,
            job_log=job_log,
        )
        gatherer = Gatherer(settings, name, status, taken, delivery, shutdown, on_batch_done)
        return cls(
            settings,
            name,
            client,
            keys,
            status,
            leases,
            taken,
            storage,
            cache,
            shutdown,
            job_log,
            store_pool,
            on_batch_done,
            delivery,
            engine,
            gatherer,
        )

    def overran(self) -> bool:
        """True once the task in progress has run past the job time limit."""
        started = self.task_started
        return started is not None and time.monotonic() - started > self.settings.job_time_limit_s


def worker_name(settings: Settings) -> str:
    """This process's name in leases, status and logs: WORKER_NAME, or host:pid."""
    return settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"


_CONTEXT: WorkerContext | None = None


def set_context(ctx: WorkerContext | None) -> None:
    global _CONTEXT
    _CONTEXT = ctx


def get_context() -> WorkerContext:
    if _CONTEXT is None:
        raise RuntimeError("the worker context is not set up (start with `kandinsky-batch worker`)")
    return _CONTEXT
