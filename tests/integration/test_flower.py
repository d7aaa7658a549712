"""Flower as the docs start it (`celery -A producer.flower flower`) listens on loopback only,
unless its own `--address` says otherwise."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from kandinsky_batch.settings import Settings
from producer.launch import worker_env
from tests.conftest import make_settings
from tests.integration.conftest import free_port, wait_for

pytestmark = pytest.mark.integration


def listening_on(port: int) -> set[str]:
    """The addresses of the sockets listening on `port`, read from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                # Each 32-bit word of the address is in host (little-endian) order.
                packed = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
                found.add(str(ipaddress.ip_address(packed)))
    return found


@contextmanager
def flower(settings: Settings, log: Path, *args: str) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "producer.flower", "flower", f"--port={port}", *args],
            env={**env, **worker_env(settings)}, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        wait_for(lambda: listening_on(port) or proc.poll() is not None, 60, f"Flower to listen ({log})")
        assert proc.poll() is None, log.read_text()
        yield port
    finally:
        # Flower's own exit joins its inspect threads, which can outlast a SIGTERM on a loaded Redis;
        # its shutdown is not what these tests are about.
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(redis_url, tmp_path, tmp_path)  # no models: Flower needs Redis only


def test_flower_listens_on_loopback_only_by_default(settings: Settings, tmp_path: Path):
    with flower(settings, tmp_path / "flower.log") as port:
        assert listening_on(port) == {"127.0.0.1"}
        assert httpx.get(f"http://127.0.0.1:{port}/healthcheck", timeout=10).status_code == 200


def test_flowers_own_address_option_still_opens_it_wider(settings: Settings, tmp_path: Path):
    with flower(settings, tmp_path / "flower.log", "--address=0.0.0.0") as port:
        assert listening_on(port) == {"0.0.0.0"}
