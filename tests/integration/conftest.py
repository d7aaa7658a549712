"""Fixtures for the fault tests (fault workers with short leases) and the API tests (a real uvicorn)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from producer.client import Client
from producer.launch import worker_env
from tests.conftest import WorkerProcess, make_settings
from tests.helpers.s3server import TEST_KEY

LEASE_TTL = 2.0


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def fault_settings(redis_url, tiny_models, tmp_path):
    def build(**overrides: Any):
        values = {"lease_ttl_s": LEASE_TTL, "chunk_size": 1, "visibility_timeout_s": 3600}
        url = overrides.pop("redis_url", redis_url)
        return make_settings(url, tiny_models, tmp_path, **{**values, **overrides})

    return build


def s3_settings(endpoint: str, bucket: str) -> dict[str, Any]:
    """Settings overrides for a bucket of moto's S3 server, failing fast (one try per request)."""
    return {
        "storage_url": f"s3://{bucket}/run",
        "s3_endpoint_url": endpoint,
        "s3_region": "us-east-1",
        "s3_access_key_id": TEST_KEY,
        "s3_secret_access_key": TEST_KEY,
        "s3_max_attempts": 1,
    }


@pytest.fixture
def start_worker(tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(
        settings,
        step_sleep: float = 0.4,
        kill_prompt: str | None = None,
        name: str = "w",
        raise_prompt: str | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        env = {"KB_TEST_STEP_SLEEP_S": str(step_sleep), **(env or {})}
        if kill_prompt:
            env["KB_TEST_KILL_PROMPT"] = kill_prompt
        if raise_prompt:
            env["KB_TEST_RAISE_PROMPT"] = raise_prompt
        settings = settings.model_copy(
            update={
                "worker_name": f"{name}{len(started)}",
                "ready_file": tmp_path / f"ready-{name}{len(started)}",
            }
        )
        proc = WorkerProcess(
            settings, tmp_path / f"{name}{len(started)}.log", module="tests.helpers.fault_worker", env=env
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


@contextmanager
def slow_worker(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, step_sleep_s: float
) -> Iterator[WorkerProcess]:
    """A real worker whose denoising steps each sleep `step_sleep_s`: jobs last long enough to watch."""
    log = tmp_path_factory.mktemp("logs") / "worker.log"
    env = {"KB_TEST_STEP_SLEEP_S": str(step_sleep_s)}
    proc = WorkerProcess(settings, log, module="tests.helpers.fault_worker", env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


# -- the HTTP API: a real `kandinsky-batch api` process on loopback --------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def api_settings(module_settings: Settings) -> Settings:
    return module_settings.model_copy(update={"api_port": free_port()})


@pytest.fixture(scope="module")
def api_env() -> dict[str, str]:
    """Environment variables the API process gets besides its settings (a module may add some)."""
    return {}


@pytest.fixture(scope="module")
def server(
    api_settings: Settings, api_env: dict[str, str], worker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("api") / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer.cli", "api"],
            env={**worker_env(api_settings), **api_env},
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{api_settings.api_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    yield url
    proc.terminate()
    # A graceful shutdown: uvicorn finishes its requests, then exits by the signal it caught.
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
    assert "Finished server process" in log.read_text()


@pytest.fixture(scope="module")
def keys(api_settings: Settings) -> dict[str, str]:
    """A key of a second tenant, and an admin key (`acme_key` is made through the CLI)."""
    with Client(api_settings) as client:
        store = ApiKeys(client.redis, client.status_store.keys)
        _, other = store.create("globex")
        _, admin = store.create("ops", admin=True)
    return {"globex": other, "admin": admin}


@pytest.fixture(scope="module")
def acme_key(api_settings: Settings) -> str:
    """A key made with `kandinsky-batch keys create`, as an operator would."""
    env = worker_env(api_settings)
    out = subprocess.run(
        [sys.executable, "-m", "producer.cli", "keys", "create", "--tenant", "acme", "--json"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    made = json.loads(out.stdout)
    assert made["tenant"] == "acme" and made["key"].startswith("kb_")
    return str(made["key"])


@pytest.fixture(scope="module")
def make_key(api_settings: Settings) -> Iterator[Any]:
    """`make_key(tenant, **limits)`: a new API key of that tenant (1000 requests/s unless given)."""
    client = Client(api_settings)
    store = ApiKeys(client.redis, client.status_store.keys)

    def make(tenant: str, **limits: Any) -> str:
        _, secret = store.create(tenant, rate_per_s=limits.pop("rate_per_s", 1000.0), **limits)
        return secret

    yield make
    client.close()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
