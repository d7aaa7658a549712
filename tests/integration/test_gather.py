"""Micro-batches across messages: a worker takes more compatible jobs off its queue, atomically.

The store's scripts on a real Redis (order, put-back, leases, return of a dead worker's
messages), then real worker processes: single submits share micro-batches, and a worker
SIGKILLed right after it took a message loses none of its jobs.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import redis

from kandinsky_batch.keys import Keys, queue_lists
from kandinsky_batch.schema import JobState, Mode
from kandinsky_batch.store.taken import TakenStore
from producer.client import Client
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


@pytest.fixture
def store(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"kbt-{uuid.uuid4().hex[:8]}")
    queue = f"{keys.prefix}.text2img"
    _, normal, _, low = queue_lists(queue)  # the Celery lists of normal and of low priority
    yield TakenStore(client, keys, ttl_s=60), client, keys, queue, normal, low
    client.close()


def test_take_pops_normal_before_low_and_never_waits(store) -> None:
    taken, client, keys, queue, normal, low = store
    client.lpush(low, b"low-1")
    client.lpush(normal, b"normal-1", b"normal-2")
    got = taken.take("w", queue, most=2) + taken.take("w", queue, most=5)
    assert [(t.queue_list, t.message) for t in got] == [
        (normal, b"normal-1"),
        (normal, b"normal-2"),
        (low, b"low-1"),
    ]
    assert taken.take("w", queue, most=3) == []  # empty lists: no wait
    # every taken message is in the worker's hash, under its lease, and on no list
    assert client.hlen(keys.taken("w")) == 3
    assert client.zscore(keys.taking(), "w") > time.time()
    assert client.llen(normal) == client.llen(low) == 0


def test_a_message_put_back_is_the_next_one_popped(store) -> None:
    taken, client, keys, queue, normal, _ = store
    client.lpush(normal, b"first", b"second")
    [first] = taken.take("w", queue)
    assert taken.put_back("w", first.entry)
    assert client.rpop(normal) == b"first"  # where kombu pops next, ahead of "second"
    assert client.hlen(keys.taken("w")) == 0
    assert client.zscore(keys.taking(), "w") is None


def test_a_live_lease_keeps_the_messages_and_an_expired_one_returns_them(store) -> None:
    taken, client, keys, queue, normal, low = store
    client.lpush(normal, b"a")
    client.lpush(low, b"b")
    assert len(taken.take("live", queue, most=2)) == 2
    assert taken.return_expired() == 0
    client.zadd(keys.taking(), {"live": time.time() - 1})  # its heartbeat stopped
    assert not taken.renew("live")  # an expired lease is never renewed
    assert taken.return_expired() == 2
    assert client.lrange(normal, 0, -1) == [b"a"] and client.lrange(low, 0, -1) == [b"b"]
    assert not client.exists(keys.taken("live")) and client.zscore(keys.taking(), "live") is None


def test_give_back_and_drop(store) -> None:
    taken, client, keys, queue, normal, _ = store
    client.lpush(normal, b"x", b"y")
    assert len(taken.take("w", queue, most=2)) == 2
    assert taken.renew("w")
    assert taken.give_back("w") == 2
    assert sorted(client.lrange(normal, 0, -1)) == [b"x", b"y"]
    assert taken.take("w", queue)
    taken.drop("w")
    assert not client.exists(keys.taken("w")) and client.zscore(keys.taking(), "w") is None


def batch_sizes(settings, client: Client, job_ids: list[str]) -> list[int]:
    root = Path(settings.storage_url.removeprefix("file://"))
    sizes = []
    for job in job_ids:
        st = client.status_store.job(job)
        assert st.state is JobState.SUCCEEDED, st.error
        sizes.append(json.loads((root / st.batch_id / f"{job}.json").read_text())["batch"]["size"])
    return sizes


def test_single_submits_run_in_micro_batches_larger_than_one(fault_settings, start_worker) -> None:
    # Given 6 jobs submitted one at a time, each in a message of its own, before a worker is up
    settings = fault_settings(max_batch_size=4)
    with Client(settings) as client:
        jobs = [client.submit({"prompt": f"single {i}", **TINY, "seed": i}) for i in range(6)]
        # When a worker serves them
        start_worker(settings, step_sleep=0.0)
        for job in jobs:
            client.wait(job, timeout=90)
        # Then they ran 4 + 2 (never more than MAX_BATCH_SIZE), each once
        sizes = batch_sizes(settings, client, jobs)
        assert sorted(sizes) == [2, 2, 4, 4, 4, 4]
        assert all(client.status_store.job(j).attempts == 1 for j in jobs)
        assert sum(client.status_store.fair.waiting(settings.queue_for(Mode.TEXT2IMG)).values()) == 0


def test_incompatible_jobs_are_left_for_their_own_micro_batch(fault_settings, start_worker) -> None:
    settings = fault_settings(max_batch_size=8)
    with Client(settings) as client:
        a = client.submit({"prompt": "small", **TINY})
        b = client.submit({"prompt": "other guidance", **TINY, "guidance_scale": 7.0})
        c = client.submit({"prompt": "small too", **TINY})
        start_worker(settings, step_sleep=0.0)
        for job in (a, b, c):
            client.wait(job, timeout=90)
        # a takes nothing past b (it does not fit and goes back first in line), then b, then c
        assert batch_sizes(settings, client, [a, b, c]) == [1, 1, 1]


def test_a_worker_killed_right_after_it_took_a_message_loses_none_of_its_jobs(
    fault_settings, start_worker
) -> None:
    # Given 3 single jobs waiting, and a worker that dies the instant it has taken extra messages
    settings = fault_settings(max_batch_size=8)
    keys = Keys(settings.key_prefix)
    with Client(settings) as client:
        jobs = [client.submit({"prompt": f"kept {i}", **TINY, "seed": i}) for i in range(3)]
        victim = start_worker(settings, step_sleep=0.0, name="victim", env={"KB_TEST_KILL_AFTER_TAKE": "1"})
        wait_for(lambda: not victim.alive(), 60, "the worker to die after taking a message")
        # Then the two messages it took are in its taken hash, nowhere else, with nothing lost yet
        assert client.redis.hlen(keys.taken("victim0")) == 2
        assert sum(client.status_store.fair.waiting(settings.queue_for(Mode.TEXT2IMG)).values()) == 0
        # When another worker comes up, its reaper returns the message once the lease runs out
        start_worker(settings, step_sleep=0.0, name="survivor")
        finals = [client.wait(job, timeout=60) for job in jobs]
    assert [f.state for f in finals] == [JobState.SUCCEEDED] * 3
    assert not client.redis.exists(keys.taken("victim0"))
    assert client.redis.zscore(keys.taking(), "victim0") is None
    # each ran and stored once (the job Celery gave the victim had not started: attempts 1)
    assert [f.attempts for f in finals] == [1, 1, 1]
