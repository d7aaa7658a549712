"""Delivery guarantees under faults, with real worker processes, real Redis and real storage.

Workers here run `tests.helpers.fault_worker`: the real worker with slow steps (so a job
can be killed mid-generation) and, for the poison test, a prompt that SIGKILLs it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kandinsky_batch.broker import make_celery
from kandinsky_batch.keys import TASK_NAME, job_id
from kandinsky_batch.schema import BatchStatus, JobSpec, JobState, Mode
from kandinsky_batch.wire import build_message
from producer.client import Client
from tests.conftest import settings_env
from tests.helpers.redis_server import pings, redis_server_binary
from tests.helpers.s3server import S3Server, create_bucket
from tests.integration.conftest import LEASE_TTL, free_port, s3_settings, wait_for

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 6, "prior_num_inference_steps": 2}


def outputs_on_disk(settings, batch: str) -> dict[str, list[str]]:
    root = Path(settings.storage_url.removeprefix("file://")) / batch
    return {d.name: sorted(p.name for p in d.iterdir()) for d in root.iterdir() if d.is_dir()}


def running(client: Client, job: str) -> bool:
    st = client.status_store.job(job)
    return st.state is JobState.RUNNING and st.progress.step >= 1


def test_sigkilled_worker_job_runs_again_once_with_one_set_of_outputs(fault_settings, start_worker):
    settings = fault_settings()
    first = start_worker(settings)
    with Client(settings) as client:
        job = client.submit({"prompt": "killed mid-generation", **TINY})
        wait_for(lambda: running(client, job), 60, "the job to be mid-generation")
        first.kill()
        start_worker(settings)
        final = client.wait(job, timeout=90)
    assert final.state is JobState.SUCCEEDED and final.attempts == 2
    batch = job.rsplit("-", 1)[0]
    assert outputs_on_disk(settings, batch) == {job: ["0.png"]}


def test_two_workers_one_killed_mid_batch_every_job_succeeds_once(fault_settings, start_worker):
    settings = fault_settings()
    victim = start_worker(settings, name="victim")
    survivor = start_worker(settings, name="survivor")
    with Client(settings) as client:
        batch = client.submit_batch([{"prompt": f"job {i}", **TINY} for i in range(6)]).batch_id
        victim_job = wait_for(
            lambda: next(
                (
                    j
                    for j in (st.job_id for st in client.jobs(batch))
                    if running(client, j) and client.status_store.job(j).worker == "victim0"
                ),
                None,
            ),
            60,
            "the victim to be mid-generation",
        )
        victim.kill()
        killed_at = time.monotonic()
        wait_for(lambda: client.redis.hget(client.status_store.keys.job(victim_job), "cr"), 30, "hand-back")
        handed_back_after = time.monotonic() - killed_at
        final = client.wait(batch, timeout=240)
    assert isinstance(final, BatchStatus) and final.counts[JobState.SUCCEEDED] == 6
    # Handed back and re-sent within about two lease TTLs, not after Celery's visibility timeout.
    assert handed_back_after <= 2 * LEASE_TTL + 1
    assert client.status_store.job(victim_job).attempts == 2
    outputs = outputs_on_disk(settings, batch)
    assert sorted(outputs) == sorted(job_id(batch, i) for i in range(6))
    assert all(files == ["0.png"] for files in outputs.values())
    assert survivor.alive()


def test_poison_job_ends_attempts_exhausted_and_the_rest_succeed(fault_settings, start_worker):
    settings = fault_settings(max_attempts=3)
    with Client(settings) as client:
        specs = [{"prompt": "fine 1", **TINY}, {"prompt": "POISON", **TINY}, {"prompt": "fine 2", **TINY}]
        batch = client.submit_batch(specs).batch_id
        poison = job_id(batch, 1)
        deaths = 0
        deadline = time.monotonic() + 180
        while not client.status(batch).done:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "batch did not finish"
            proc = start_worker(settings, step_sleep=0.0, kill_prompt="POISON")
            while proc.alive() and not client.status(batch).done:  # type: ignore[union-attr]
                time.sleep(0.1)
            deaths += 0 if proc.alive() else 1
            proc.stop()
        st = client.status_store.job(poison)
        dead = [d.job_id for d in client.dead_letters()]
        listed = subprocess.run(
            [sys.executable, "-m", "producer.cli", "dead-letters"],
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert st.state is JobState.FAILED and st.error is not None and st.error.code == "attempts_exhausted"
    assert st.attempts == 3 and deaths == 3
    assert dead == [poison]
    assert listed.returncode == 0 and listed.stdout.startswith(f"{poison}  attempts 3")
    final = client.status(batch)
    assert isinstance(final, BatchStatus)
    assert final.counts[JobState.SUCCEEDED] == 2 and final.counts[JobState.FAILED] == 1


def test_sigterm_mid_job_finishes_it_within_the_grace_period(fault_settings, start_worker):
    settings = fault_settings(shutdown_grace_s=30)
    proc = start_worker(settings)
    with Client(settings) as client:
        job = client.submit({"prompt": "finish me", **TINY})
        wait_for(lambda: running(client, job), 60, "the job to start")
        started = time.monotonic()
        code = proc.stop(timeout=40)
        assert time.monotonic() - started < 30
        st = client.status_store.job(job)
    assert code == 0 and st.state is JobState.SUCCEEDED and st.attempts == 1


def test_sigterm_past_the_grace_period_hands_the_job_back(fault_settings, start_worker):
    settings = fault_settings(shutdown_grace_s=1)
    proc = start_worker(settings, step_sleep=1.0)
    with Client(settings) as client:
        job = client.submit({"prompt": "hand me back", **{**TINY, "num_inference_steps": 20}})
        wait_for(lambda: running(client, job), 60, "the job to start")
        started = time.monotonic()
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: client.status_store.state(job) is JobState.QUEUED, 30, "the hand-back")
        # at the first step boundary after the 1 s grace: a step is ~1 s of sleep plus compute
        assert time.monotonic() - started < 1 + 4
        assert proc.proc.wait(timeout=30) == 0  # exits by itself after the one SIGTERM
        start_worker(settings, step_sleep=0.0)
        final = client.wait(job, timeout=90)
    assert final.state is JobState.SUCCEEDED and final.attempts == 2


def test_the_same_message_delivered_twice_is_generated_once(fault_settings, start_worker):
    settings = fault_settings()
    start_worker(settings, name="a")
    start_worker(settings, name="b")
    app = make_celery(settings)
    message = build_message("twice", [(0, JobSpec(prompt="only once", seed=3, **TINY))])
    for _ in range(2):
        app.send_task(TASK_NAME, kwargs=message, queue=settings.queue_for(Mode.TEXT2IMG))
    app.close()
    with Client(settings) as client:
        # Sent straight onto the queue, the job has a status once a worker has received it.
        wait_for(lambda: client.status_store.state(job_id("twice", 0)), 30, "a worker to receive it")
        final = client.wait(job_id("twice", 0), timeout=90)
        time.sleep(1.5)  # let the second delivery be handled too
        again = client.status_store.job(job_id("twice", 0))
    assert final.state is JobState.SUCCEEDED and again.attempts == 1
    meta = json.loads(Path(final.metadata.removeprefix("file://")).read_text())  # type: ignore[union-attr]
    assert meta["attempt"] == 1


def test_a_pickle_message_is_refused_not_run(fault_settings, start_worker):
    settings = fault_settings()
    proc = start_worker(settings, step_sleep=0.0)
    queue = settings.queue_for(Mode.TEXT2IMG)
    pickled = make_celery(settings)
    pickled.conf.accept_content = ["json", "pickle"]
    message = build_message("pickled", [(0, JobSpec(prompt="x", **TINY))])
    pickled.send_task(TASK_NAME, kwargs=message, queue=queue, serializer="pickle")
    pickled.close()
    with Client(settings) as client:
        good = client.submit({"prompt": "json is fine", **TINY})
        assert client.wait(good, timeout=60).state is JobState.SUCCEEDED
        assert client.redis.llen(queue) == 0
        assert not client.redis.exists(client.status_store.keys.job(job_id("pickled", 0)))
    assert proc.alive()


@pytest.fixture
def aof_redis(tmp_path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A private Redis with AOF on, and a function that restarts it on the same port."""
    port = free_port()
    folder = tmp_path / "aof"
    folder.mkdir()
    args = [
        redis_server_binary(),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        str(folder),
        "--save",
        "",
    ]
    procs = [subprocess.Popen(args, stdout=subprocess.DEVNULL)]
    url = f"redis://127.0.0.1:{port}/0"
    wait_for(lambda: pings(url), 10, "the AOF redis to start")

    def restart() -> None:
        procs[-1].terminate()
        procs[-1].wait(10)
        time.sleep(1.0)
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
        wait_for(lambda: pings(url), 10, "the AOF redis to come back")

    yield url, restart
    for proc in procs:
        proc.kill()
        proc.wait()


def test_redis_restarted_mid_batch_every_job_completes(fault_settings, start_worker, aof_redis):
    url, restart = aof_redis
    settings = fault_settings(redis_url=url)
    start_worker(settings, step_sleep=0.2)
    with Client(settings) as client:
        batch = client.submit_batch([{"prompt": f"job {i}", **TINY} for i in range(5)]).batch_id
        wait_for(lambda: client.status(batch).counts[JobState.SUCCEEDED] >= 1, 60, "a first job")  # type: ignore[union-attr]
        restart()
    with Client(settings) as client:
        final = client.wait(batch, timeout=120)
    assert isinstance(final, BatchStatus) and final.counts[JobState.SUCCEEDED] == 5


def test_storage_down_jobs_retry_and_succeed_after(fault_settings, start_worker, tmp_path):
    server = S3Server()
    endpoint = server.start()
    bucket = create_bucket(endpoint)
    # One job per micro-batch, each a few tenths of a second: jobs are still to store when storage goes.
    settings = fault_settings(**s3_settings(endpoint, bucket), max_batch_size=1)
    worker = start_worker(settings, step_sleep=0.3)
    try:
        with Client(settings) as client:
            batch = client.submit_batch([{"prompt": f"job {i}", **TINY} for i in range(4)]).batch_id
            wait_for(lambda: client.status(batch).counts[JobState.SUCCEEDED] >= 1, 60, "a first job")  # type: ignore[union-attr]
            server.stop()
            done_before = client.status(batch).counts[JobState.SUCCEEDED]  # type: ignore[union-attr]
            failed_before = worker.log(10**7).count("upload of ")
            # The worker keeps trying: three more failed uploads, each retried from memory after a backoff.
            wait_for(lambda: worker.log(10**7).count("upload of ") >= failed_before + 3, 60, "failed uploads")
            # Nothing is marked succeeded while its objects cannot be stored.
            assert client.status(batch).counts[JobState.SUCCEEDED] == done_before  # type: ignore[union-attr]
            server.start()
            final = client.wait(batch, timeout=120)
            assert isinstance(final, BatchStatus) and final.counts[JobState.SUCCEEDED] == 4
            from kandinsky_batch.storage import open_storage

            store = open_storage(settings)
            for st in client.jobs(batch):
                for uri in [*st.outputs, st.metadata or ""]:
                    assert store.get(store.key_for(uri) or "")  # every object is really there
    finally:
        server.stop()
