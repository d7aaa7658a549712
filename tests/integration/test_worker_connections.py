"""What one worker process costs Redis: at most 4 connections, and under 1 command a second idle.

Measured from outside, on a Redis of the test's own so that no other test's traffic counts:

- connections: the worker's TCP sockets to that Redis, read from /proc (its file descriptors
  and its network table), so no connection escapes the count whatever its name; each must also
  carry the worker's `CLIENT SETNAME` (`kb-worker:<name>`), the name an operator finds them by;
- commands: `INFO commandstats` over 10 idle seconds after `CONFIG RESETSTAT`, which counts the
  commands scripts run as well (`tot-cmds` per client needs Redis 7.2).

With the default settings (no Celery events, gossip, mingle or remote control) an idle worker
was measured at 3 connections and 0.5 commands a second: one EXISTS every 5 s (the reaper's
pass over an idle system), one BRPOP every 10 s, one heartbeat write every 30 s. Running jobs,
it stays at 4. With `CELERY_EVENTS` on (what Flower needs) it holds 4 more, 7 measured (Celery's
event publisher and its remote-control pub/sub, two each) and publishes a worker heartbeat every
2 s: 1.0 command a second measured.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from kandinsky_batch.keys import queue_list_of
from kandinsky_batch.redis_client import client_name, connect
from kandinsky_batch.schema import BatchStatus, JobState, Mode, Priority
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.taken import TakenStore
from producer.client import Client
from tests.conftest import WorkerProcess, make_settings
from tests.helpers.redis_server import pings, redis_server_binary
from tests.integration.conftest import free_port, wait_for
from worker.delivery import Delivery
from worker.jobs import JobLog
from worker.leases import LeaseStore
from worker.reaper import BUSY_INTERVAL_S, IDLE_INTERVAL_S, Reaper
from worker.shutdown import never
from worker.store_pool import StorePool

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
SETTLE_S = 3.0  # after ready: the start-up's own commands (first heartbeat, kombu's first sweep)
WINDOW_S = 10.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A private Redis: its command counts and clients are this test's worker's alone."""
    port = free_port()
    args = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    proc = subprocess.Popen([*args, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: pings(url), 10, "the private Redis to start")
    yield url
    proc.kill()
    proc.wait()


def sockets_to(pid: int, port: int) -> set[int]:
    """The local ports of process `pid`'s established TCP connections to 127.0.0.1:`port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for row in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if state == "01" and remote == f"0100007F:{port:04X}" and inode in inodes:
            ports.add(int(local.partition(":")[2], 16))
    return ports


def connections(monitor: redis.Redis, worker: WorkerProcess, redis_port: int) -> list[dict[str, Any]]:
    """The worker's connections as Redis lists them (by the worker's own sockets, not by name)."""
    assert worker.proc is not None
    ports = sockets_to(worker.proc.pid, redis_port)
    listed = monitor.client_list()
    return [c for c in listed if int(str(c["addr"]).rpartition(":")[2]) in ports]


def idle_commands_per_second(monitor: redis.Redis) -> tuple[float, dict[str, int]]:
    """Commands run in the next WINDOW_S seconds, per second (scripts' commands included)."""
    monitor.config_resetstat()
    started = time.monotonic()
    time.sleep(WINDOW_S)
    stats = monitor.info("commandstats")
    elapsed = time.monotonic() - started
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    calls["config|resetstat"] -= 1  # the test's own
    calls = {name: n for name, n in calls.items() if n}
    return sum(calls.values()) / elapsed, calls


def start(settings: Settings, tmp_path: Path) -> WorkerProcess:
    return WorkerProcess(settings, tmp_path / "worker.log").start()


def test_a_worker_holds_at_most_4_connections_and_idle_sends_under_1_command_a_second(
    own_redis: str, tiny_models: Path, tmp_path: Path
) -> None:
    settings = make_settings(own_redis, tiny_models, tmp_path, max_batch_size=2)
    port = int(own_redis.rpartition(":")[2].partition("/")[0])
    monitor = redis.Redis.from_url(own_redis)
    worker = start(settings, tmp_path)
    try:
        time.sleep(SETTLE_S)
        idle = connections(monitor, worker, port)
        assert worker.proc is not None
        name = client_name("worker", f"{socket.gethostname()}:{worker.proc.pid}")  # the default WORKER_NAME
        assert 0 < len(idle) <= 4, idle
        assert {c["name"] for c in idle} == {name}, idle
        per_second, calls = idle_commands_per_second(monitor)
        assert per_second <= 1.0, calls
        assert "publish" not in calls  # no Celery events by default

        # Running jobs (the task, the storing thread, the heartbeat and the reaper all at work), too
        with Client(settings) as client:
            batch = client.submit_batch([{"prompt": f"job {i}", **TINY} for i in range(8)]).batch_id
            most = 0
            while not client.status(batch).done:  # type: ignore[union-attr]
                most = max(most, len(connections(monitor, worker, port)))
                time.sleep(0.02)
            final = client.status(batch)
        assert isinstance(final, BatchStatus) and final.counts[JobState.SUCCEEDED] == 8
        assert 0 < most <= 4, most
        assert len(connections(monitor, worker, port)) <= 4
    finally:
        worker.stop()
        monitor.close()


def test_celery_events_for_flower_cost_4_more_connections_and_a_publish_every_2_seconds(
    own_redis: str, tiny_models: Path, tmp_path: Path
) -> None:
    settings = make_settings(own_redis, tiny_models, tmp_path, celery_events=True)
    port = int(own_redis.rpartition(":")[2].partition("/")[0])
    monitor = redis.Redis.from_url(own_redis)
    worker = start(settings, tmp_path)
    try:
        time.sleep(SETTLE_S)
        assert len(connections(monitor, worker, port)) <= 4 + 4
        per_second, calls = idle_commands_per_second(monitor)
        assert calls.get("publish", 0) >= WINDOW_S / 2 - 1  # Celery's worker heartbeats, for Flower
        assert per_second <= 1.0 + 0.5, calls
        assert any(c["cmd"] == "psubscribe" for c in connections(monitor, worker, port))  # remote control
    finally:
        worker.stop()
        monitor.close()


def test_an_idle_reaper_pass_is_one_exists_and_a_due_resend_still_goes_when_due(
    own_redis: str, tmp_path: Path
) -> None:
    settings = make_settings(own_redis, tmp_path, tmp_path)  # no models: the reaper needs Redis only
    monitor = redis.Redis.from_url(own_redis)
    with Client(settings) as client:
        status = client.status_store
        leases = LeaseStore(client.redis, status.keys, settings.lease_ttl_s)
        delivery = Delivery(settings, "idle", status, leases, JobLog(), StorePool(1), never, lambda _: None)
        taken = TakenStore(client.redis, status.keys, settings.lease_ttl_s)
        reaper = Reaper(delivery, taken, busy=lambda: False)
        client.redis.ping()  # its connection is made (and introduced) before counting
        monitor.config_resetstat()
        # Given an idle system, a pass is one command and the next comes after the idle interval
        assert reaper.run_once() == IDLE_INTERVAL_S
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in monitor.info("commandstats").items()}
        assert calls == {"exists": 1, "config|resetstat": 1}
        # When a re-send is delayed by half a second, the next pass comes when it is due, and sends it
        queue = settings.queue_for(Mode.TEXT2IMG)
        status.push(queue, Priority.NORMAL, "", [(1, "an envelope")], delay_s=0.5)
        wait = reaper.run_once()
        assert 0 < wait <= 0.5
        time.sleep(wait)
        assert reaper.run_once() == BUSY_INTERVAL_S  # it did work: the next pass comes in a second
        assert client.redis.lrange(queue_list_of(queue, Priority.NORMAL), 0, -1) == [b"an envelope"]
    monitor.close()


def test_a_name_redis_would_refuse_becomes_a_valid_client_name() -> None:
    assert client_name("worker", "gpu node 1:42\n") == "kb-worker:gpu_node_1:42_"


def test_a_capped_client_keeps_the_urls_password_its_retries_and_its_name() -> None:
    client = connect("redis://cache:6379/0?password=p%40ss", name="kb-test", max_connections=2)
    pool = client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool) and pool.max_connections == 2
    kwargs = pool.connection_kwargs
    assert kwargs["password"] == "p@ss" and kwargs["client_name"] == "kb-test"
    assert kwargs["retry"].get_retries() == 12
    client.close()
