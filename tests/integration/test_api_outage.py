"""While Redis is down the API answers 503 problem documents within seconds, and recovers after.

A real redis-server of the test's own (so stopping it touches nobody else), a real uvicorn.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from kandinsky_batch.store.apikeys import ApiKeys
from producer.client import Client
from producer.launch import worker_env
from tests.conftest import make_settings
from tests.integration.conftest import auth, free_port, wait_for
from tests.integration.test_redis_auth import redis_server

pytestmark = pytest.mark.integration
SPEC = {"prompt": "a kite", "height": 64, "width": 64}


def start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: _pings(url), 20, "redis-server")
    return proc


def _pings(url: str) -> bool:
    try:
        return bool(
            Client(make_settings(url, Path("/nonexistent"), Path("/tmp")), redis_retries=0).redis.ping()
        )
    except Exception:
        return False


@pytest.fixture
def outage(tmp_path: Path, tiny_models: Path) -> Iterator[tuple[str, str, Path]]:
    """(API URL, Redis URL, folder): an API whose Redis the test may stop and start."""
    port = free_port()
    redis_proc = start_redis(port, tmp_path)
    settings = make_settings(f"redis://127.0.0.1:{port}/0", tiny_models, tmp_path, api_port=free_port())
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        api = subprocess.Popen([sys.executable, "-m", "producer.cli", "api"], env=worker_env(settings),
                               stdout=out, stderr=out)  # fmt: skip
    url = f"http://127.0.0.1:{settings.api_port}"
    try:
        wait_for(lambda: _status(f"{url}/readyz") == 200, 60, "the API")
        yield url, settings.redis_url, tmp_path
    finally:
        api.terminate()
        api.wait(timeout=30)
        redis_proc.kill()
        redis_proc.wait()
    assert "Traceback" not in log.read_text()


def _status(url: str, **kwargs: object) -> int | None:
    try:
        return httpx.get(url, timeout=30, **kwargs).status_code  # type: ignore[arg-type]
    except httpx.TransportError:
        return None


def test_redis_down_is_503_soon_and_the_api_comes_back_with_it(outage, tiny_models):
    url, redis_url, folder = outage
    settings = make_settings(redis_url, tiny_models, folder)
    with Client(settings) as client:
        _, key = ApiKeys(client.redis, client.status_store.keys).create("acme")
    redis.Redis.from_url(redis_url).shutdown(nosave=True)
    started = time.monotonic()
    answer = httpx.post(f"{url}/v1/jobs", json=SPEC, headers=auth(key), timeout=60)
    took = time.monotonic() - started
    assert answer.status_code == 503 and answer.headers["content-type"] == "application/problem+json"
    assert took < 15, f"503 after {took:.1f} s"
    assert _status(f"{url}/readyz") == 503
    assert _status(f"{url}/healthz") == 200  # the process is up, only not ready
    restarted = start_redis(int(redis_url.rsplit(":", 1)[1].split("/")[0]), folder)
    try:
        wait_for(lambda: _status(f"{url}/readyz") == 200, 30, "ready again")
        # The key lived only in the Redis that went away (no persistence here): 401, not 5xx.
        assert httpx.post(f"{url}/v1/jobs", json=SPEC, headers=auth(key)).status_code == 401
    finally:
        restarted.kill()
        restarted.wait()
