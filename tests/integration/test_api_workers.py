"""`API_WORKERS=2`: two real API processes on one port, each on its own SO_REUSEPORT socket; the
supervisor restarts one that is killed and stops both on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from producer.client import Client
from producer.launch import worker_env
from tests.integration.conftest import auth, free_port, wait_for

pytestmark = pytest.mark.integration


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def listening(pid: int) -> bool:
    """Whether the process holds a listening TCP socket (state 0A in /proc/net/tcp)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return False
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(row.split()[3] == "0A" and row.split()[9] in inodes for row in rows)


@pytest.fixture
def two_workers(
    module_settings: Settings, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    settings = module_settings.model_copy(
        update={"api_port": free_port(), "api_workers": 2, "webhooks": False}
    )
    with Client(settings) as client:
        _, secret = ApiKeys(client.redis, client.status_store.keys).create("two-workers", rate_per_s=10_000)
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "producer.cli", "api"], env=worker_env(settings), stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{settings.api_port}"
    wait_for(lambda: len([c for c in children(proc.pid) if listening(c)]) == 2, 60, "two listening workers")
    yield proc, url, secret
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def submit_many(url: str, secret: str, clients: int, each: int) -> list[int]:
    def one_client(_: int) -> list[int]:
        with httpx.Client(base_url=url, headers=auth(secret), timeout=30) as http:
            return [http.post("/v1/jobs", json={"prompt": "p", "height": 64, "width": 64}).status_code
                    for _ in range(each)]  # fmt: skip

    with ThreadPoolExecutor(clients) as pool:
        return [code for codes in pool.map(one_client, range(clients)) for code in codes]


def test_two_workers_serve_one_port_and_a_killed_one_is_replaced(two_workers):
    proc, url, secret = two_workers
    assert submit_many(url, secret, clients=8, each=5) == [202] * 40
    first = children(proc.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len([c for c in children(proc.pid) - {victim} if listening(c)]) == 2, 60, "a new worker")
    assert submit_many(url, secret, clients=4, each=5) == [202] * 20
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    assert not children(proc.pid)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)
