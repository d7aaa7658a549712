"""Status in a real Redis: atomic transitions keep batch counters equal to job states."""

from __future__ import annotations

import pytest
import redis

from producer.errors import NotFound
from producer.keys import Keys, job_id
from producer.schema import JobState
from producer.status import Created, StatusStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url: str, request: pytest.FixtureRequest):
    client = redis.Redis.from_url(redis_url)
    prefix = f"kbt-store-{request.node.name[:40]}"
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    yield StatusStore(client, Keys(prefix), ttl_s=600)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)
    client.close()


def counts(store: StatusStore, batch: str) -> dict[JobState, int]:
    return store.batch(batch).counts


def test_creating_jobs_twice_counts_them_once(store: StatusStore):
    first = store.create_jobs("b1", [(0, 11), (1, 12)])
    assert [flag for flag, _ in first] == [Created.NEW, Created.NEW]
    store.mark_sent("b1", [0])
    again = store.create_jobs("b1", [(0, 99), (1, 98), (2, 13)])
    assert again == [(Created.SENT, 11), (Created.UNSENT, 12), (Created.NEW, 13)]
    assert store.batch("b1").total == 3
    assert counts(store, "b1")[JobState.QUEUED] == 3


def test_counters_follow_every_transition(store: StatusStore):
    store.create_jobs("b2", [(i, i) for i in range(4)])
    assert store.start(job_id("b2", 0), "w1", 10, {}) == (True, JobState.QUEUED)
    assert store.start(job_id("b2", 1), "w1", 10, {})[0]
    assert store.succeed(job_id("b2", 0), ["file:///x.png"], "file:///x.json")
    assert store.fail(job_id("b2", 1), "bad_input", "broken image")
    assert store.cancel(job_id("b2", 2))
    c = counts(store, "b2")
    assert c == {
        JobState.QUEUED: 1,
        JobState.RUNNING: 0,
        JobState.SUCCEEDED: 1,
        JobState.FAILED: 1,
        JobState.CANCELED: 1,
    }
    assert sum(c.values()) == store.batch("b2").total
    assert not store.batch("b2").done


def test_terminal_jobs_do_not_move_again(store: StatusStore):
    store.create_jobs("b3", [(0, 1)])
    jid = job_id("b3", 0)
    store.start(jid, "w", 1, {})
    store.succeed(jid, [], "m")
    assert store.start(jid, "w2", 1, {}) == (False, JobState.SUCCEEDED)
    assert not store.fail(jid, "x", "y")
    assert not store.cancel(jid)
    assert store.job(jid).attempts == 1


def test_a_finished_batch_is_done_and_expires(store: StatusStore):
    store.create_jobs("b4", [(0, 1), (1, 2)])
    for i in range(2):
        store.start(job_id("b4", i), "w", 1, {})
        store.succeed(job_id("b4", i), [f"file:///{i}.png"], "m")
    batch = store.batch("b4")
    assert batch.done and batch.finished_at is not None
    assert 0 < store.redis.ttl(store.keys.batch("b4")) <= 600
    assert 0 < store.redis.ttl(store.keys.job(job_id("b4", 0))) <= 600


def test_job_status_has_what_callers_read(store: StatusStore):
    store.create_jobs("b5", [(0, 42)])
    jid = job_id("b5", 0)
    store.start(jid, "worker-a", 20, {"prompt": "p"})
    store.progress(jid, 5, 20)
    running = store.job(jid)
    assert (running.state, running.attempts, running.seed, running.worker) == (
        JobState.RUNNING,
        1,
        42,
        "worker-a",
    )
    assert (running.progress.step, running.progress.total) == (5, 20)
    assert running.spec == {"prompt": "p"}
    store.fail(jid, "out_of_memory", "too big")
    failed = store.job(jid)
    assert failed.error is not None and failed.error.code == "out_of_memory"


def test_unknown_ids_are_not_found(store: StatusStore):
    with pytest.raises(NotFound):
        store.job("nope-0")
    with pytest.raises(NotFound):
        store.batch("nope")
    assert store.transition("nope-0", JobState.RUNNING, [JobState.QUEUED]) == (False, None)


def test_the_transition_that_finishes_a_batch_reports_it_once(store: StatusStore):
    done: list[str] = []
    store.on_batch_done = done.append
    store.create_jobs("b6", [(0, 1), (1, 2), (2, 3)])
    store.cancel(job_id("b6", 0))
    store.start(job_id("b6", 1), "w", 1, {})
    store.fail(job_id("b6", 1), "bad_input", "x")
    assert done == []
    store.start(job_id("b6", 2), "w", 1, {})
    store.succeed(job_id("b6", 2), [], "m")
    store.cancel(job_id("b6", 2))  # refused: already terminal
    assert done == ["b6"]
