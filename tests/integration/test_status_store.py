"""Status in a real Redis: atomic transitions keep batch counters equal to job states."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from kandinsky_batch.errors import NotFound
from kandinsky_batch.keys import NO_TENANT, JobRef, Keys, job_id, queue_lists
from kandinsky_batch.schema import JobState, Priority
from kandinsky_batch.store import records
from kandinsky_batch.store.queues import Chunk, Created
from kandinsky_batch.store.reads import SCAN_CHUNK
from kandinsky_batch.store.status import CanceledJobs, Moved, StatusStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url: str):
    """A store under a prefix of its own: no other test's keys, and no scan of the shared Redis."""
    client = redis.Redis.from_url(redis_url)
    yield StatusStore(client, Keys(f"kbt-store-{uuid.uuid4().hex[:12]}"), ttl_s=600)
    client.close()


def counts(store: StatusStore, batch: str) -> dict[JobState, int]:
    return store.batch(batch).counts


def test_creating_jobs_twice_counts_them_once(store: StatusStore):
    assert store.create_jobs("b1", [(0, 11), (1, 12)]) == [Created.NEW, Created.NEW]
    again = store.create_jobs("b1", [(0, 99), (1, 98), (2, 13)])
    assert again == [Created.EXISTS, Created.EXISTS, Created.NEW]
    assert [j.seed for j in store.jobs("b1")] == [11, 12, 13]  # a job keeps the seed it was created with
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
    assert store.transition("nope-0", JobState.RUNNING, [JobState.QUEUED]) == Moved(False, None)


def test_the_transition_that_finishes_a_batch_reports_it_once(store: StatusStore):
    moves: list[Moved] = []
    store.create_jobs("b6", [(0, 1), (1, 2), (2, 3)])
    moves.append(store.cancel(job_id("b6", 0)))
    store.start(job_id("b6", 1), "w", 1, {})
    moves.append(store.fail(job_id("b6", 1), "bad_input", "x"))
    assert not any(m.batch_done for m in moves)
    store.start(job_id("b6", 2), "w", 1, {})
    finishing = store.succeed(job_id("b6", 2), [], "m")
    again = store.cancel(job_id("b6", 2))  # refused: already terminal
    assert finishing == Moved(True, JobState.RUNNING, batch_done=True)
    assert again == Moved(False, JobState.SUCCEEDED)
    # Reporting is all a transition does: the caller that saw the finish writes the manifest
    assert store.batch("b6").manifest is None


def test_a_queued_job_is_a_record_until_a_worker_receives_it(store: StatusStore):
    store.create_jobs("r1", [(0, 5), (2, 7)], Priority.LOW)
    assert store.redis.exists(store.keys.job(job_id("r1", 0))) == 0  # no hash per queued job
    queued = store.job(job_id("r1", 2))
    assert (queued.state, queued.seed, queued.priority) == (JobState.QUEUED, 7, Priority.LOW)
    assert queued.created_at is not None and abs(queued.created_at - time.time()) < 5
    assert store.state(job_id("r1", 0)) is JobState.QUEUED
    with pytest.raises(NotFound):
        store.job(job_id("r1", 1))  # a bad line's index: never created
    assert store.receive("r1", [(0, 99)]) == [(Created.EXISTS, 5)]  # the stored seed wins
    received = store.redis.hgetall(store.keys.job(job_id("r1", 0)))
    assert received[b"st"] == b"queued" and received[b"sd"] == b"5" and received[b"pr"] == b"low"
    assert store.create_jobs("r1", [(0, 1), (2, 1)]) == [Created.EXISTS, Created.EXISTS]
    assert counts(store, "r1")[JobState.QUEUED] == 2


def test_receive_creates_open_format_jobs_and_never_revives_an_expired_one(store: StatusStore):
    assert store.receive("r2", [(3, 11)]) == [(Created.NEW, 11)]
    assert store.batch("r2").total == 1 and store.batch("r2").counts[JobState.QUEUED] == 1
    jid = job_id("r2", 3)
    store.start(jid, "w", 1, {})
    store.succeed(jid, [], "m")
    store.redis.delete(store.keys.job(jid))  # what its TTL does later
    with pytest.raises(NotFound):
        store.job(jid)
    assert store.receive("r2", [(3, 11)]) == [(Created.GONE, 11)]
    assert store.create_jobs("r2", [(3, 11)]) == [Created.EXISTS]
    assert store.batch("r2").total == 1


def test_a_transition_of_an_unreceived_job_makes_its_hash_from_the_record(store: StatusStore):
    store.create_jobs("r3", [(0, 21), (1, 22)])
    assert store.cancel(job_id("r3", 0))
    canceled = store.job(job_id("r3", 0))
    assert (canceled.state, canceled.seed, canceled.finished_at is not None) == (JobState.CANCELED, 21, True)
    assert store.start(job_id("r3", 0), "w", 1, {}) == (False, JobState.CANCELED)
    moved, before = store.start(job_id("r3", 1), "w", 4, {"prompt": "p"})
    assert (moved, before) == (True, JobState.QUEUED)
    running = store.job(job_id("r3", 1))
    assert (running.state, running.seed, running.spec, running.attempts) == (
        JobState.RUNNING,
        22,
        {"prompt": "p"},
        1,
    )
    assert counts(store, "r3") == {
        JobState.QUEUED: 0,
        JobState.RUNNING: 1,
        JobState.SUCCEEDED: 0,
        JobState.FAILED: 0,
        JobState.CANCELED: 1,
    }


def test_jobs_lists_hashes_and_records_in_index_order(store: StatusStore):
    store.create_jobs("r4", [(i, 100 + i) for i in range(SCAN_CHUNK + 3) if i != 5])
    store.start(job_id("r4", 1), "w", 1, {})
    listed = list(store.jobs("r4"))
    assert [j.job_id for j in listed] == [job_id("r4", i) for i in range(SCAN_CHUNK + 3) if i != 5]
    assert [j.seed for j in listed] == [100 + i for i in range(SCAN_CHUNK + 3) if i != 5]
    assert listed[1].state is JobState.RUNNING
    assert {j.state for j in listed[2:]} == {JobState.QUEUED}
    assert dict(store.job_states("r4"))[JobRef("r4", SCAN_CHUNK + 2)] is JobState.QUEUED


def test_records_in_several_shards_expire_with_their_batch_and_come_back_with_it(store: StatusStore):
    far = 2 * records.SHARD_JOBS + 1  # a third shard: only its own string grows
    store.create_jobs("r5", [(0, 1), (far, 2)])
    assert store.redis.strlen(store.keys.records("r5", 2)) == records.byte_offset(far) + records.RECORD_BYTES
    assert store.redis.exists(store.keys.records("r5", 1)) == 0
    for index in (0, far):
        store.cancel(job_id("r5", index))
    assert store.batch("r5").done
    for shard in (0, 2):
        assert 0 < store.redis.ttl(store.keys.records("r5", shard)) <= 600
    store.create_jobs("r5", [(1, 3)])  # a new job reopens the batch: nothing of it may expire
    assert store.batch("r5").finished_at is None
    for key in (store.keys.batch("r5"), store.keys.records("r5", 0), store.keys.records("r5", 2)):
        assert store.redis.ttl(key) == -1


def test_retry_drops_the_old_error_in_the_same_step(store: StatusStore):
    store.create_jobs("r6", [(0, 1)])
    jid = job_id("r6", 0)
    store.fail(jid, "bad_input", "broken")
    assert store.retry(jid)
    again = store.job(jid)
    assert (again.state, again.error, again.finished_at) == (JobState.QUEUED, None, None)
    assert not store.retry(jid)  # only a failed job is retried


def test_cancel_many_cancels_a_large_batch_in_chunks_and_reports_the_finish_once(store: StatusStore):
    n = 2 * SCAN_CHUNK + 5
    store.create_jobs("r7", [(i, i) for i in range(n)])
    store.start(job_id("r7", 0), "w", 1, {})
    assert not store.succeed(job_id("r7", 0), [], "m").batch_done
    canceled = store.cancel_many(job for job, state in store.job_states("r7") if state is JobState.QUEUED)
    assert canceled == CanceledJobs(n - 1, ("r7",))
    assert counts(store, "r7")[JobState.CANCELED] == n - 1
    assert store.batch("r7").done
    assert store.cancel_many([job_id("r7", 1), "not-a-job"]) == CanceledJobs(0)


def test_submit_records_a_chunk_and_pushes_its_message_in_one_step_or_not_at_all(store: StatusStore):
    queue = f"{store.keys.prefix}.q"
    _, normal, _, low = queue_lists(queue)
    behind = store.keys.fair_tenant(queue, Priority.NORMAL, NO_TENANT)  # the messages not fed yet
    store.redis.lpush(low, "waiting")

    def chunk(jobs: list[tuple[int, int]], message: str) -> Chunk:
        return Chunk("s1", jobs, Priority.NORMAL, [(len(jobs), message)], queue)

    try:
        [pushed] = store.submit([chunk([(0, 1), (1, 2)], "message-1")])
        assert (pushed.sent, pushed.queue_length) == (True, 2)  # every list of the queue counts
        assert store.redis.lrange(normal, 0, -1) == [b"message-1"]  # fed at once: a worker may start
        assert store.batch("s1").total == 2
        # A chunk with a job already recorded pushes nothing and records nothing
        again, other = store.submit(
            [
                chunk([(1, 9), (2, 3)], "message-2"),
                chunk([(3, 6)], "message-3"),  # same pipeline, goes
            ]
        )
        assert (again.sent, again.created) == (False, [Created.EXISTS, Created.NEW])
        assert other.sent and store.redis.lrange(normal, 0, -1) == [b"message-1"]
        assert store.redis.lrange(behind, 0, -1) == [b"1\nmessage-3"]  # waiting its turn, fed next
        assert store.redis.rpop(normal) == b"message-1"  # a worker takes it
        assert store.fair.feed([queue]) == 1 and store.redis.lrange(normal, 0, -1) == [b"message-3"]
        assert store.queue_length(queue) == 2 and store.batch("s1").total == 3
        assert store.state(job_id("s1", 2)) is None
        # A sparse chunk (rare-mode jobs far apart) is written record by record
        [sparse] = store.submit([chunk([(10, 4), (500, 5)], "message-4")])
        assert sparse.sent and [store.job(job_id("s1", i)).seed for i in (10, 500)] == [4, 5]
        assert store.job(job_id("s1", 0)).seed == 1 and store.state(job_id("s1", 11)) is None
        for bad in ([(20, 1), (20, 2)], [(21, 1), (20, 2)], [(0, 1), (records.SHARD_JOBS, 2)]):
            with pytest.raises(ValueError, match="distinct, ascending and in one shard"):
                store.submit([chunk(bad, "never")])
        assert store.batch("s1").total == 5 and store.fair.waiting(queue)[Priority.NORMAL] == 2
    finally:
        store.redis.delete(*queue_lists(queue), behind)


def test_listing_a_sparse_batch_reads_only_where_its_jobs_are(store: StatusStore):
    last = 10**9 - 1  # the highest index a message may name: shard 15258
    store.receive("sp", [(0, 1), (last, 2)])  # open-format jobs: hashes and records
    store.create_jobs("sp", [(5, 3)])  # a queued one: a record only
    listed = list(store.jobs("sp"))
    assert [(j.job_id, j.seed, j.state) for j in listed] == [
        (job_id("sp", 0), 1, JobState.QUEUED),
        (job_id("sp", 5), 3, JobState.QUEUED),
        (job_id("sp", last), 2, JobState.QUEUED),
    ]
    assert store.cancel_many(job for job, _ in store.job_states("sp")).count == 3
    assert store.batch("sp").done
    assert 0 < store.redis.ttl(store.keys.records("sp", records.shard_of(last))) <= 600
