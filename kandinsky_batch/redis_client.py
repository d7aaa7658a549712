"""The one Redis client factory: the SDK, the worker, the probe, the API and the tools connect here.

Every client rides out a Redis restart of up to ~30 s (retries with exponential backoff on
connection errors and timeouts) instead of failing the call, whichever side it is on. A refused
password is an answer, not an outage: it is never retried, so it shows as one clear error.
`redis://:password@host:port/db` and `rediss://` (TLS; `?ssl_ca_certs=/path/ca.pem` for a
private CA) work for the status store and, with the same URL, for Celery's broker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.retry import Retry

T = TypeVar("T")
REFUSED = (AuthenticationError, AuthorizationError)


def _unless_refused(is_retryable: Callable[[Exception], bool] | None) -> Callable[[Exception], bool]:
    def retryable(error: Exception) -> bool:
        return not isinstance(error, REFUSED) and (is_retryable is None or is_retryable(error))

    return retryable


class _RetryUnlessRefused(Retry):
    """redis-py's Retry, except that a refused password or command fails at once."""

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        return super().call_with_retry(do, fail, _unless_refused(is_retryable), with_failure_count)


class _AsyncRetryUnlessRefused(AsyncRetry):
    """The same rule for redis-py's asyncio client."""

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        return await super().call_with_retry(do, fail, _unless_refused(is_retryable), with_failure_count)


def _client_options(socket_timeout: float) -> dict[str, Any]:
    return {
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
    }


def connect(url: str, socket_timeout: float = 30.0, retries: int = 12) -> redis.Redis:
    """A client for `url` (`redis://`, `rediss://`, with a password if the URL has one)."""
    retry = _RetryUnlessRefused(ExponentialBackoff(cap=5.0, base=0.1), retries=retries)
    return redis.Redis.from_url(url, retry=retry, **_client_options(socket_timeout))


def connect_async(url: str, socket_timeout: float = 30.0, retries: int = 12) -> redis.asyncio.Redis:
    """An asyncio client for `url`, with the same retries and timeouts as `connect`'s."""
    retry = _AsyncRetryUnlessRefused(ExponentialBackoff(cap=5.0, base=0.1), retries=retries)
    return redis.asyncio.Redis.from_url(url, retry=retry, **_client_options(socket_timeout))


def redact(url: str) -> str:
    """The URL with its password replaced by `***`, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def describe(error: redis.RedisError, url: str) -> str:
    """One line saying what went wrong with Redis at `url`, and what to check."""
    where = redact(url)
    if isinstance(error, AuthenticationError):
        return f"Redis at {where} refused the password: check the password in KANDINSKY_BATCH_REDIS_URL ({error})"
    if isinstance(error, AuthorizationError):
        return f"Redis at {where} refused a command for this user: {error}"
    return f"cannot reach Redis at {where}: {error}"
