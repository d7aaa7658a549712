"""Leases in a real Redis: one holder at a time, expiry, renewal, hand-over, status cleanup."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from kandinsky_batch.errors import Canceled, HandBack, LeaseLost
from kandinsky_batch.keys import JobRef, Keys, job_id
from kandinsky_batch.schema import JobSpec, JobState
from kandinsky_batch.store.status import StatusStore
from worker.jobs import Job
from worker.leases import Fence, Lease, LeaseStore
from worker.progress import StepCheck

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


def test_the_fence_holds_only_live_leases_and_an_unfenced_one_holds_all(stores):
    leases, status = stores
    status.receive("b", [(0, 1), (1, 2)])
    mine, other = job_id("b", 0), job_id("b", 1)
    leases.acquire("w1", [(mine, {})])
    leases.acquire("w2", [(other, {})])
    fence = Fence(leases, "w1")
    assert fence.name == "w1" and fence.held([mine, other]) == {mine}
    fence.check(mine)
    with pytest.raises(LeaseLost):
        fence.check(other)
    unfenced = Fence(None, "w1")
    assert unfenced.name == "" and unfenced.held([mine, other]) == {mine, other}


def test_the_step_check_asks_only_its_deadline_fence_and_status(stores):
    short, status = stores
    leases = LeaseStore(short.redis, short.keys, ttl_s=60.0)  # none expires while the test runs
    status.receive("s", [(0, 1), (1, 2)])
    jobs = [Job(JobRef("s", i), JobSpec(prompt="x")) for i in range(2)]
    for job in jobs:
        status.start(job.ref, "w1", 4, {})
    leases.acquire("w1", [(job.job_id, {}) for job in jobs])
    deadline: list[float | None] = [None]
    check = StepCheck(jobs, status, Fence(leases, "w1"), lambda: deadline[0], interval_s=0.0)
    # Serving and holding both leases: the step is written as progress
    check(2, 4)
    assert [status.job(job.ref).progress.step for job in jobs] == [2, 2]
    # One lease gone (another worker took it): only the other job's progress moves
    leases.release("w1", [jobs[1].job_id])
    leases.acquire("w2", [(jobs[1].job_id, {})])
    check(3, 4)
    assert check.lost == {jobs[1].job_id}
    assert [status.job(job.ref).progress.step for job in jobs] == [3, 2]
    # Every job canceled: the micro-batch stops
    for job in jobs:
        status.cancel(job.ref)
    leases.acquire("w1", [(job.job_id, {}) for job in jobs])  # a cancel drops leases: held again
    with pytest.raises(Canceled):
        check(4, 4)
    # Past the grace deadline of a stopping worker: handed back before anything else
    deadline[0] = time.monotonic() - 1
    with pytest.raises(HandBack):
        check(4, 4)
    # No lease left: stopped, nothing more is written
    deadline[0] = None
    leases.release("w1", [job.job_id for job in jobs])
    with pytest.raises(LeaseLost):
        check(4, 4)
