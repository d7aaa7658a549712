"""`kandinsky-batch worker check`: ready only with warm pipelines, Redis and storage reachable.

The probe runs in its own process, so warmth is read from the ready file that
the serving worker keeps fresh with its heartbeat.
"""

from __future__ import annotations

import time

import redis

from kandinsky_batch.errors import KandinskyBatchError
from kandinsky_batch.redis_client import connect, describe
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import open_storage

HEARTBEAT_S = 5.0  # how often a serving worker touches its ready file


def problems(settings: Settings) -> list[str]:
    """What stops this worker from being ready; empty when it is."""
    found = []
    try:
        age = time.time() - settings.ready_file.stat().st_mtime
        if age > HEARTBEAT_S * 4:
            found.append(f"ready file {settings.ready_file} is stale ({age:.0f} s old)")
    except FileNotFoundError:
        found.append(f"no ready file at {settings.ready_file}: pipelines not warm or worker not consuming")
    try:
        with connect(settings.redis_url, socket_timeout=3, retries=0) as client:
            client.ping()
    except redis.RedisError as exc:
        found.append(describe(exc, settings.redis_url))
    try:
        open_storage(settings).check()
    except (KandinskyBatchError, ValueError, OSError) as exc:
        found.append(f"storage {settings.storage_url} unusable: {exc}")
    return found
