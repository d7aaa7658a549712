"""Nothing stranded, no write after a lost lease: real fault workers, real Redis, real storage.

- an unexpected error fails its job with `internal_error`, and the worker and its batch go on;
- a job left running with no lease is found and handed back by a reaper;
- a worker paused (SIGSTOP) past its lease resumes and writes nothing for the job another
  worker finished meanwhile;
- recover (crash count, transition, dead letter) is one step, whatever number of reapers race;
- a delayed retry survives the worker that delayed it.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from itertools import pairwise
from pathlib import Path
from urllib.parse import urlparse

import pytest
import redis

from kandinsky_batch.keys import JobField, JobRef, Keys
from kandinsky_batch.schema import BatchStatus, JobState
from kandinsky_batch.store.status import Recovered, Recovery, StatusStore
from producer.client import Client
from tests.helpers.s3server import S3Server, create_bucket
from tests.integration.conftest import s3_settings, wait_for

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 6, "prior_num_inference_steps": 2}


def files_of(settings, batch: str) -> dict[str, tuple[float, bytes]]:
    """Every file under the batch's folder: (mtime, bytes), by relative path."""
    root = Path(urlparse(settings.storage_url).path) / batch
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file()
    }


def events_of(client: Client, job: str) -> list[str]:
    return [state.value for _, j, state in client.status_store.events_after("0-0", 100_000) if j == job]


def test_an_unexpected_error_fails_its_job_with_internal_error_and_the_rest_go_on(
    fault_settings, start_worker
):
    settings = fault_settings()
    worker = start_worker(settings, step_sleep=0.0, raise_prompt="the buggy mix")
    with Client(settings) as client:
        specs = [{"prompt": p, **TINY} for p in ("before", "the buggy mix", "after")]
        batch = client.submit_batch(specs).batch_id
        final = client.wait(batch, timeout=120)
        assert isinstance(final, BatchStatus) and final.done and final.finished_at is not None
        states = {st.index: st for st in client.jobs(batch)}
    assert states[0].state is JobState.SUCCEEDED and states[2].state is JobState.SUCCEEDED
    bug = states[1]
    assert bug.state is JobState.FAILED and bug.error is not None
    assert bug.error.code == "internal_error" and "ValueError: an injected bug" in bug.error.message
    assert worker.alive() and "Traceback" in worker.log()  # the traceback went to the log


def test_a_running_job_with_no_lease_is_handed_back_by_a_reaper(fault_settings, start_worker):
    settings = fault_settings()
    start_worker(settings, step_sleep=0.0)
    with Client(settings) as client:
        store = client.status_store
        # Given a job left running with its spec stored, but no lease and no message (its worker
        # released the lease and then died before it handed the job back)
        store.create_jobs("orphaned", [(0, 7)])
        store.receive("orphaned", [(0, 7)])
        ref = JobRef("orphaned", 0)
        assert store.start(ref, "gone-worker", 6, {"prompt": "orphan", **TINY, "seed": 7})[0]
        assert client.redis.zscore(store.keys.leases(), ref.id) is None
        # Then a reaper finds it, hands it back (one crash) and it runs again
        final = client.wait(ref.id, timeout=60)
        assert final.state is JobState.SUCCEEDED and final.attempts == 2
        assert store.field(ref, JobField.CRASHES) == "1"


def test_a_worker_paused_past_its_lease_writes_nothing_after_it_resumes(fault_settings, start_worker):
    settings = fault_settings()
    paused = start_worker(settings, step_sleep=0.3, name="paused")
    with Client(settings) as client:
        job = client.submit({"prompt": "paused mid-generation", **TINY})
        batch = JobRef.parse(job).batch_id  # type: ignore[union-attr]
        wait_for(lambda: client.status_store.job(job).progress.step >= 1, 60, "the job to be mid-generation")
        assert paused.proc is not None
        os.kill(paused.proc.pid, signal.SIGSTOP)
        try:
            # Given another worker that runs the job once the paused one's lease has expired
            other = start_worker(settings, step_sleep=0.0, name="other")
            final = client.wait(job, timeout=90)
            assert final.state is JobState.SUCCEEDED and final.worker == "other1"
            before = files_of(settings, batch)
        finally:
            os.kill(paused.proc.pid, signal.SIGCONT)
        # When the paused worker resumes mid-step and runs on for a while
        wait_for(
            lambda: "lost" in paused.log() or "leases are gone" in paused.log(), 30, "the lost lease seen"
        )
        time.sleep(3 * 0.3 + 1)
        # Then it wrote nothing: same files, same bytes, metadata from the run that succeeded
        assert files_of(settings, batch) == before
        meta = json.loads(Path(urlparse(final.metadata or "").path).read_text())
        assert meta["worker"] == final.worker and meta["attempt"] == final.attempts
        assert sorted(before) == [f"{job}.json", f"{job}/0.png", "manifest.jsonl"]
        # And the job never ran on two workers at once
        states = events_of(client, job)
        assert all(not (a == b == "running") for a, b in pairwise(states)), states
        assert client.status_store.job(job).state is JobState.SUCCEEDED
        assert paused.alive() and other.alive()


def test_recover_counts_one_crash_and_one_dead_letter_whatever_number_of_reapers_race(redis_url):
    client = redis.Redis.from_url(redis_url)
    keys = Keys(f"kbt-recover-{os.getpid()}")
    try:
        store = StatusStore(client, keys, ttl_s=600)
        store.create_jobs("race", [(0, 1)])
        ref = JobRef("race", 0)
        store.receive("race", [(0, 1)])
        store.start(ref, "dead-worker", 2, {"prompt": "x"})
        recoveries: list[Recovery] = []
        barrier = threading.Barrier(8)

        def reap() -> None:
            barrier.wait()
            recoveries.append(store.recover(ref, max_attempts=1))

        threads = [threading.Thread(target=reap) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.outcome for r in recoveries) == sorted([Recovered.FAILED] + [Recovered.REFUSED] * 7)
        assert [r.outcome for r in recoveries if r.batch_done] == [Recovered.FAILED]  # it finished the batch
        assert store.dead_letters(10) == [ref.id]
        job = store.job(ref)
        assert job.state is JobState.FAILED and job.error and job.error.code == "attempts_exhausted"
        assert client.hget(keys.job(ref), "cr") == b"1"
        batch = store.batch("race")
        assert batch.counts[JobState.FAILED] == 1 and batch.counts[JobState.RUNNING] == 0 and batch.done
    finally:
        for key in client.scan_iter(f"{keys.prefix}:*"):
            client.delete(key)
        client.close()


def test_a_delayed_retry_survives_the_worker_that_delayed_it(fault_settings, start_worker):
    server = S3Server()
    endpoint = server.start()
    bucket = create_bucket(endpoint)
    settings = fault_settings(
        **s3_settings(endpoint, bucket),
        upload_retry_window_s=0.0,
        retry_backoff_s=6.0,
        retry_backoff_max_s=6.0,
    )
    first = start_worker(settings, step_sleep=0.0, name="delayer")
    try:
        with Client(settings) as client:
            # Given storage down: the job is handed back with a delayed re-send
            server.stop()
            job = client.submit({"prompt": "retried later", **TINY})
            delayed = client.status_store.keys.delayed()
            wait_for(lambda: client.redis.zcard(delayed) == 1, 60, "a delayed re-send")
            assert client.status_store.state(job) is JobState.QUEUED
            # When the worker that delayed it dies during the wait, and storage comes back
            first.kill()
            server.start()
            start_worker(settings, step_sleep=0.0, name="survivor")
            # Then the job still runs when it is due, on the other worker
            final = client.wait(job, timeout=90)
            assert final.state is JobState.SUCCEEDED and final.worker == "survivor1"
            assert client.redis.zcard(delayed) == 0
            assert client.status_store.field(job, JobField.RETRIES) == "1"
    finally:
        server.stop()
