"""What one worker process holds: settings, connections, warm pipelines, the engine, its leases."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from kandinsky_batch.errors import KandinskyBatchError, StorageUnavailable
from kandinsky_batch.keys import Keys
from kandinsky_batch.manifest import write_manifest
from kandinsky_batch.redis_client import REFUSED, connect, describe, ping_once
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage, open_storage
from kandinsky_batch.store.status import StatusStore
from kandinsky_batch.store.taken import TakenStore
from worker.engine import Engine
from worker.jobs import Job
from worker.leases import LeaseStore
from worker.pipelines import PipelineCache

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    name: str
    redis: redis.Redis
    keys: Keys
    status: StatusStore
    leases: LeaseStore
    storage: Storage
    cache: PipelineCache
    engine: Engine
    taken: TakenStore  # messages taken beside Celery's one, to fill micro-batches
    current: set[str] = field(default_factory=set)  # job ids leased by the task in progress
    queue: str = ""  # the queue of the last task (its jobs may still be storing)
    beat: Callable[[], None] | None = None  # the heartbeat, to be seen busy at once
    stopping_since: float | None = None  # monotonic time SIGTERM arrived
    task_started: float | None = None  # monotonic start of the task in progress

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        """Connect, check storage and warm the pipelines: a worker that cannot work fails here."""
        name = worker_name(settings)
        cache = PipelineCache(settings)
        cache.check_sources(list(settings.modes))  # a wrong model path is told before any wait on Redis
        client = connect(settings.redis_url)
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
        storage = open_storage(settings)
        storage.check()
        cache.warm(list(settings.modes))
        engine = Engine(settings, cache, storage, status, name)
        taken = TakenStore(client, keys, settings.lease_ttl_s)
        ctx = cls(settings, name, client, keys, status, leases, storage, cache, engine, taken)
        engine.stop_deadline = ctx.stop_deadline
        engine.on_storage_failure = ctx.retry_later
        engine.leases = leases
        status.on_batch_done = ctx.write_manifest
        return ctx

    def write_manifest(self, batch_id: str) -> None:
        """The worker whose job finished a batch writes its manifest; a failure only logs."""
        try:
            uri = write_manifest(self.status, self.storage, batch_id)
            log.info("batch %s done; manifest %s", batch_id, uri)
        except (KandinskyBatchError, OSError, ValueError) as exc:
            log.warning("batch %s is done but its manifest was not written: %s", batch_id, exc)

    def retry_later(self, jobs: list[Job], exc: StorageUnavailable) -> None:
        """Jobs a background upload handed back: sent again after a backoff (worker/delivery.py)."""
        from worker.delivery import retry_later

        retry_later(self, jobs, exc)

    def stop_deadline(self) -> float | None:
        """When a stopping worker must give its jobs back (monotonic); None while serving."""
        if self.stopping_since is None:
            return None
        return self.stopping_since + self.settings.shutdown_grace_s

    def overran(self) -> bool:
        """True once the task in progress has run past the job time limit."""
        started = self.task_started
        return started is not None and time.monotonic() - started > self.settings.job_time_limit_s

    def begin_shutdown(self) -> None:
        if self.stopping_since is None:
            self.stopping_since = time.monotonic()


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
