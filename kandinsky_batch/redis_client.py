"""The one Redis client factory: the SDK, the worker, the probe, the API and the tools connect here.

Every client rides out a Redis restart of up to ~30 s (retries with exponential backoff on
connection errors and timeouts) instead of failing the call, whichever side it is on. A refused
password is an answer, not an outage: it is never retried, so it shows as one clear error.
`redis://:password@host:port/db`, `redis://host:port/db?password=...` and `rediss://` (TLS;
`?ssl_ca_certs=/path/ca.pem` for a private CA) work for the status store and, with the same URL,
for Celery's broker (`normalized` puts a query's password where kombu reads it). No URL is ever
printed with its credentials: messages show `redact(url)`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote, unquote, unquote_plus, urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.retry import Retry

T = TypeVar("T")
REFUSED = (AuthenticationError, AuthorizationError)
# Query parameters redis-py reads as credentials (it decodes their names; we also ignore case).
CREDENTIAL_PARAMS = frozenset({"password", "username"})
MASK = "***"
# How long a call waits for a connection of a capped pool: longer than the retries of the calls
# holding them (~45 s of backoff over a Redis restart), so waiting never fails a call they survive.
POOL_WAIT_S = 120.0


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


def _client_options(socket_timeout: float, connect_timeout: float = 5.0) -> dict[str, Any]:
    return {
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "health_check_interval": 30,
    }


def connect(
    url: str,
    socket_timeout: float = 30.0,
    retries: int = 12,
    *,
    name: str | None = None,
    max_connections: int = 0,
) -> redis.Redis:
    """A client for `url` (`redis://`, `rediss://`, with a password if the URL has one).

    The client is thread-safe: its pool opens a connection per call in flight at once. With
    `max_connections`, a call made while that many are in use waits for one (up to
    `POOL_WAIT_S`) instead of opening another. `name` is its connections' `CLIENT SETNAME`.
    """
    retry = _RetryUnlessRefused(ExponentialBackoff(cap=5.0, base=0.1), retries=retries)
    options: dict[str, Any] = {"retry": retry, **_client_options(socket_timeout)}
    if name:
        options["client_name"] = name
    if not max_connections:
        return redis.Redis.from_url(normalized(url), **options)
    pool = redis.BlockingConnectionPool.from_url(
        normalized(url), max_connections=max_connections, timeout=POOL_WAIT_S, **options
    )
    return redis.Redis.from_pool(pool)


def client_name(role: str, name: str) -> str:
    """The name a process gives its Redis connections (`CLIENT LIST` shows it): `kb-<role>:<name>`.

    Redis refuses names with spaces or characters outside printable ASCII; those become `_`.
    """
    return "".join(c if "!" <= c <= "~" else "_" for c in f"kb-{role}:{name}")


def ping_once(url: str, timeout_s: float = 3.0) -> None:
    """One ping, no retries: a command's first contact fails in seconds rather than after ~40.

    A client made by `connect` keeps its retries for later calls, so an outage in the middle of
    a long run is still ridden out; only a Redis that was never there is reported at once.
    """
    retry = _RetryUnlessRefused(ExponentialBackoff(cap=5.0, base=0.1), retries=0)
    options = _client_options(timeout_s, connect_timeout=timeout_s)
    with redis.Redis.from_url(normalized(url), retry=retry, **options) as client:
        client.ping()


def connect_async(
    url: str, socket_timeout: float = 30.0, retries: int = 12, max_connections: int = 0
) -> redis.asyncio.Redis:
    """An asyncio client for `url`, with the same retries and timeouts as `connect`'s.

    With `max_connections`, a call made while that many connections are in use waits for one
    (up to `socket_timeout`), where the default pool fails it at once (at 100).
    """
    retry = _AsyncRetryUnlessRefused(ExponentialBackoff(cap=5.0, base=0.1), retries=retries)
    options = {"retry": retry, **_client_options(socket_timeout)}
    if not max_connections:
        return redis.asyncio.Redis.from_url(normalized(url), **options)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        normalized(url), max_connections=max_connections, timeout=socket_timeout, **options
    )
    return redis.asyncio.Redis.from_pool(pool)


def _credential_param(piece: str) -> bool:
    name, eq, _ = piece.partition("=")
    return bool(eq) and unquote_plus(name).strip().lower() in CREDENTIAL_PARAMS


def normalized(url: str) -> str:
    """`url` with a user name or password given as a query parameter moved into its userinfo.

    redis-py reads `?password=` but kombu (Celery's broker) fails on it, so both get this form;
    as in redis-py, a password already in the userinfo wins. Other URLs come back unchanged.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("redis", "rediss") or not parts.query:
        return url
    pieces = parts.query.split("&")
    given: dict[str, str] = {}
    for piece in filter(_credential_param, pieces):
        name, _, value = piece.partition("=")
        given.setdefault(unquote_plus(name).strip().lower(), unquote_plus(value))
    if not given:
        return url
    user = unquote(parts.username or "") or given.get("username", "")
    password = unquote(parts.password or "") or given.get("password", "")
    userinfo = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{userinfo}@{host}" if userinfo else host
    query = "&".join(p for p in pieces if not _credential_param(p))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact(url: str) -> str:
    """`url` with every credential replaced by `***`, for messages and logs.

    User names and passwords go, in the userinfo and as query parameters (any case). Parsing is
    not trusted here: a password with an unencoded `/`, `?` or `#` moves its `@` past where a URL
    parser looks, so everything before the last `@` is hidden, and so is any fragment.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    pieces = re.split(r"([?&])", rest)
    for i in range(2, len(pieces), 2):  # the pieces after a '?' or '&'
        if _credential_param(pieces[i]):
            pieces[i] = f"{pieces[i].partition('=')[0]}={MASK}"
    rest = "".join(pieces)
    if "@" in rest:
        rest = f"{MASK}@{rest.rpartition('@')[2]}"
    if "#" in rest:
        rest = f"{rest.partition('#')[0]}#{MASK}"
    return f"{scheme}{sep}{rest}"


def describe(error: redis.RedisError, url: str) -> str:
    """One line saying what went wrong with Redis at `url`, and what to check."""
    where = redact(url)
    if isinstance(error, AuthenticationError):
        return f"Redis at {where} refused the password: check the password in KANDINSKY_BATCH_REDIS_URL ({error})"
    if isinstance(error, AuthorizationError):
        return f"Redis at {where} refused a command for this user: {error}"
    hint = " (is Redis running there? KANDINSKY_BATCH_REDIS_URL says where it is)"
    if not isinstance(error, redis.ConnectionError | redis.TimeoutError):
        hint = ""
    return f"cannot reach Redis at {where}: {error}{hint}"
