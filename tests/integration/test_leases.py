"""Leases in a real Redis: one holder at a time, expiry, renewal, hand-over, status cleanup."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from kandinsky_batch.keys import Keys, job_id
from kandinsky_batch.schema import JobState
from kandinsky_batch.store.status import StatusStore
from worker.leases import Lease, LeaseStore

pytestmark = pytest.mark.integration


@pytest.fixture
def stores(redis_url):
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"kbt-lease-{uuid.uuid4().hex[:8]}")
    yield LeaseStore(client, keys, ttl_s=1.0), StatusStore(client, keys, ttl_s=600)
    for key in client.scan_iter(f"{keys.prefix}:*"):
        client.delete(key)
    client.close()


def test_a_live_lease_keeps_a_second_worker_off(stores):
    leases, status = stores
    status.receive("b", [(0, 1)])  # as a worker does before it leases
    job = job_id("b", 0)
    assert leases.acquire("w1", [(job, {"prompt": "x"})]) == [Lease.MINE]
    assert leases.acquire("w2", [(job, {"prompt": "x"})]) == [Lease.HELD]
    assert leases.acquire("w1", [(job, {"prompt": "x"})]) == [Lease.MINE]
    assert status.job(job).spec == {"prompt": "x"}


def test_an_expired_lease_is_stale_and_taken_over(stores):
    leases, status = stores
    status.create_jobs("b", [(0, 1)])
    job = job_id("b", 0)
    leases.acquire("w1", [(job, {})])
    time.sleep(1.1)
    assert leases.expired() == [job]
    assert leases.acquire("w2", [(job, {})]) == [Lease.STALE]
    assert leases.owner(job) == "w2"


def test_renewal_keeps_a_lease_alive_and_only_the_owner_renews(stores):
    leases, status = stores
    status.create_jobs("b", [(0, 1)])
    job = job_id("b", 0)
    leases.acquire("w1", [(job, {})])
    for _ in range(3):
        time.sleep(0.5)
        assert leases.renew("w1", [job]) == (1, 0)
        assert leases.renew("w2", [job]) == (0, 1)  # another's lease: not renewed, lost to w2
    assert leases.expired() == []


def test_an_expired_lease_is_never_renewed_and_a_finished_job_is_not_lost(stores):
    leases, status = stores
    status.create_jobs("b", [(0, 1), (1, 2)])
    status.receive("b", [(0, 1), (1, 2)])
    expired, done = job_id("b", 0), job_id("b", 1)
    leases.acquire("w1", [(expired, {}), (done, {})])
    status.start(done, "w1", 1, {})
    status.succeed(done, [], "m")  # leaving running drops its lease
    time.sleep(1.1)
    assert leases.renew("w1", [expired, done]) == (0, 1)
    assert leases.held("w1", [expired, done]) == set()
    assert leases.expired() == [expired]


def test_only_one_reaper_takes_an_expired_lease(stores):
    leases, status = stores
    status.create_jobs("b", [(0, 1)])
    job = job_id("b", 0)
    leases.acquire("w1", [(job, {})])
    time.sleep(1.1)
    assert leases.take_expired("r1", job) is True
    assert leases.take_expired("r2", job) is False


def test_leaving_running_drops_the_lease(stores):
    leases, status = stores
    status.create_jobs("b", [(0, 1), (1, 2)])
    a, b = job_id("b", 0), job_id("b", 1)
    leases.acquire("w1", [(a, {}), (b, {})])
    status.start(a, "w1", 1, {})
    assert leases.owner(a) == "w1"  # running keeps it
    status.succeed(a, [], "m")
    status.cancel(b)
    assert leases.owner(a) is None and leases.owner(b) is None
    assert status.state(b) is JobState.CANCELED
