"""What one worker process holds: settings, connections, warm pipelines, the engine."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import redis

from producer.keys import Keys
from producer.settings import Settings
from producer.status import StatusStore
from producer.storage import Storage, open_storage
from worker.engine import Engine
from worker.pipelines import PipelineCache


@dataclass
class WorkerContext:
    settings: Settings
    name: str
    redis: redis.Redis
    status: StatusStore
    storage: Storage
    cache: PipelineCache
    engine: Engine

    @classmethod
    def build(cls, settings: Settings) -> WorkerContext:
        """Connect, check storage and warm the pipelines: a worker that cannot work fails here."""
        name = settings.worker_name or f"{socket.gethostname()}:{os.getpid()}"
        client = redis.Redis.from_url(settings.redis_url)
        client.ping()
        status = StatusStore(client, Keys(settings.key_prefix), settings.job_ttl_s)
        storage = open_storage(settings)
        storage.check()
        cache = PipelineCache(settings)
        cache.warm(list(settings.modes))
        engine = Engine(settings, cache, storage, status, name)
        return cls(settings, name, client, status, storage, cache, engine)


_CONTEXT: WorkerContext | None = None


def set_context(ctx: WorkerContext | None) -> None:
    global _CONTEXT
    _CONTEXT = ctx


def get_context() -> WorkerContext:
    if _CONTEXT is None:
        raise RuntimeError("the worker context is not set up (start with `kandinsky-batch worker`)")
    return _CONTEXT
