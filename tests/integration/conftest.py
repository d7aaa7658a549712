"""Fixtures for the fault tests: fault workers (tests/fault_worker.py) with short leases."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import WorkerProcess, make_settings

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


@pytest.fixture
def start_worker(tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(
        settings,
        step_sleep: float = 0.4,
        kill_prompt: str | None = None,
        name: str = "w",
        raise_prompt: str | None = None,
    ) -> WorkerProcess:
        env = {"KB_TEST_STEP_SLEEP_S": str(step_sleep)}
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
            settings, tmp_path / f"{name}{len(started)}.log", module="tests.fault_worker", env=env
        )
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()
