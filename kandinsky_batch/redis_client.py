"""The one Redis client factory: the SDK, the worker, the probe and the tools all connect here.

Every client rides out a Redis restart of up to ~30 s (retries with exponential backoff on
connection errors and timeouts) instead of failing the call, whichever side it is on.
"""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def connect(url: str, socket_timeout: float = 30.0, retries: int = 12) -> redis.Redis:
    """A client for `url` (`redis://`, `rediss://`, with a password if the URL has one)."""
    return redis.Redis.from_url(
        url,
        retry=Retry(ExponentialBackoff(cap=5.0, base=0.1), retries=retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        socket_timeout=socket_timeout,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
