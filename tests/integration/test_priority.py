"""Priorities and backpressure on the real broker lists: high jobs of any tenant go before normal
ones and normal before low, a plain Celery client's message runs whatever its priority, and the
producer pauses while a queue (every priority, its lists and fair structures) holds the
high-water mark."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from typing import Any

import pytest
from celery import Celery

from kandinsky_batch.errors import NotFound
from kandinsky_batch.keys import TASK_NAME, JobRef, kombu_list, queue_list_of, queue_lists
from kandinsky_batch.manifest import manifest_writer
from kandinsky_batch.schema import JobState, Mode, Priority
from kandinsky_batch.wire import build_message, validate_spec
from producer.cli.main import main
from producer.client import Client
from tests.conftest import WorkerProcess, make_settings
from tests.helpers.tenants import drain, submit_as
from worker.delivery import Delivery
from worker.jobs import JobLog
from worker.leases import LeaseStore
from worker.shutdown import never
from worker.store_pool import StorePool

pytestmark = pytest.mark.integration

TINY: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


TINY_FLAGS = ["--height", "64", "--width", "64", "--steps", "2", "--prior-steps", "2"]


def tiny(prompt: str) -> dict[str, Any]:
    return {"prompt": prompt, **TINY}


def wait_known_and_done(client: Client, batch: str, timeout: float = 180) -> None:
    """Wait for a batch to finish; one sent straight onto the queue is unknown until a worker reads it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.wait(batch, timeout=max(1.0, deadline - time.monotonic()), poll_s=0.2)
            return
        except NotFound:
            assert time.monotonic() < deadline, f"batch {batch} never reached a worker"
            time.sleep(0.2)


def test_high_jobs_of_any_tenant_go_before_normal_ones_and_normal_before_low(
    redis_url, tiny_models, tmp_path
):
    # Micro-batches of 2 images, each tenant's jobs sent lowest priority first: the worker still
    # runs the high jobs first (Celery hands it one, it takes the other), then the normal, then
    # the low ones, whoever sent them.
    settings = make_settings(redis_url, tiny_models, tmp_path, chunk_size=1, max_batch_size=2)
    queue = settings.queue_for(Mode.TEXT2IMG)
    with Client(settings) as client:
        low = submit_as(client, "alpha", [tiny(f"low {i}") for i in range(3)], Priority.LOW)
        # An open-format message sent with kombu's low priority, with no status recorded first.
        raw_batch = f"raw{uuid.uuid4().hex[:8]}"
        spec = validate_spec(tiny("raw low"), settings)
        client.app.send_task(TASK_NAME, kwargs=build_message(raw_batch, [(0, spec)]), queue=queue, priority=9)
        normal = submit_as(client, "beta", [tiny(f"normal {i}") for i in range(2)])
        high = submit_as(client, "gamma", [tiny(f"high {i}") for i in range(2)], Priority.HIGH)
        assert client.status_store.fair.waiting(queue) == {
            Priority.HIGH: 2,
            Priority.NORMAL: 2,
            Priority.LOW: 4,
        }
        assert client.status(low[0]).priority is Priority.LOW  # type: ignore[union-attr]
        assert client.status(high[0]).priority is Priority.HIGH  # type: ignore[union-attr]

        proc = WorkerProcess(settings, tmp_path / "w.log").start()
        try:
            for job in [*low, *normal, *high]:
                client.wait(job, timeout=180, poll_s=0.2)
            wait_known_and_done(client, raw_batch)
        finally:
            assert proc.stop() == 0
        jobs = {p: [client.status_store.job(j) for j in ids] for p, ids in
                ((Priority.HIGH, high), (Priority.NORMAL, normal), (Priority.LOW, low))}  # fmt: skip
        jobs[Priority.LOW] += list(client.jobs(raw_batch))
    for priority, of in jobs.items():
        assert {j.state for j in of} == {JobState.SUCCEEDED}
        assert {j.priority for j in of} == {priority}
    started = {p: [j.started_at or 0 for j in of] for p, of in jobs.items()}
    assert max(started[Priority.HIGH]) < min(started[Priority.NORMAL])
    assert max(started[Priority.NORMAL]) < min(started[Priority.LOW])


def test_a_plain_celery_clients_message_lands_on_a_list_workers_read_and_runs(
    redis_url, tiny_models, tmp_path
):
    # Celery with no broker options at all: kombu's default priority steps and separator.
    settings = make_settings(redis_url, tiny_models, tmp_path, max_batch_size=1)
    queue = settings.queue_for(Mode.TEXT2IMG)
    plain = Celery(broker=redis_url, set_as_current=False)
    plain.conf.task_serializer = "json"
    spec = validate_spec(tiny("plain"), settings)
    batches: dict[int, str] = {}
    expected = {0: Priority.NORMAL, 1: Priority.HIGH, 5: Priority.NORMAL, 7: Priority.NORMAL, 9: Priority.LOW}
    with Client(settings) as client:
        try:
            for priority in expected:
                batches[priority] = f"plain{priority}{uuid.uuid4().hex[:8]}"
                message = build_message(batches[priority], [(0, spec)])
                plain.send_task(TASK_NAME, kwargs=message, queue=queue, priority=priority)
                assert client.redis.llen(kombu_list(queue, priority)) >= 1  # where kombu filed it
        finally:
            plain.close()
        # priority 9 goes to `{queue}\x06\x169` (kombu's separator): a list workers read
        assert client.redis.llen(f"{queue}\x06\x169") == 1 and kombu_list(queue, 9) in queue_lists(queue)
        proc = WorkerProcess(settings, tmp_path / "w.log").start()
        try:
            for batch in batches.values():
                wait_known_and_done(client, batch)
        finally:
            assert proc.stop() == 0
        for priority, batch in batches.items():
            [job] = client.jobs(batch)
            assert (job.state, job.priority) == (JobState.SUCCEEDED, expected[priority]), priority


def test_submit_pauses_at_the_high_water_mark_counting_every_priority(redis_url, tiny_models, tmp_path):
    settings = make_settings(redis_url, tiny_models, tmp_path, chunk_size=1, queue_high_water=3)
    queue = settings.queue_for(Mode.TEXT2IMG)
    with Client(settings) as client:
        fair = client.status_store.fair
        client.submit_batch([tiny("waiting low")], priority=Priority.LOW)  # 1 low message waiting
        done = threading.Event()

        def submit() -> None:
            client.submit_batch([tiny(f"p{i}") for i in range(4)])
            done.set()

        thread = threading.Thread(target=submit, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while fair.waiting(queue)[Priority.NORMAL] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # had it ignored the low message, it would have sent a third one by now
        assert fair.waiting(queue) == {Priority.HIGH: 0, Priority.NORMAL: 2, Priority.LOW: 1}
        assert not done.is_set()
        assert client.redis.rpop(queue_list_of(queue, Priority.LOW))  # a worker took the low one: room
        deadline = time.monotonic() + 30
        while fair.waiting(queue)[Priority.NORMAL] < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert fair.waiting(queue)[Priority.NORMAL] == 3 and not done.is_set()
        assert len(drain(client.status_store, queue)) == 3  # workers took them all
        assert done.wait(30)
        thread.join(5)
        drain(client.status_store, queue)


@pytest.mark.parametrize("priority", [Priority.LOW, Priority.HIGH])
def test_the_cli_submits_at_a_priority_and_status_shows_it(cli_env, client: Client, capsys, priority):
    code = main(["submit", "--prompt", "a quiet harbor", "--priority", priority.value, "--json", *TINY_FLAGS])
    submitted = json.loads(capsys.readouterr().out)
    assert code == 0 and submitted["sent"] == 1
    [job] = submitted["job_ids"]
    assert main(["status", job, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["priority"]) == ("queued", priority.value)
    its_list = queue_list_of(client.settings.queue_for(Mode.TEXT2IMG), priority)
    assert client.redis.llen(its_list) == 1
    client.redis.delete(its_list)  # nothing consumes this module's queues
    assert main(["submit", "--prompt", "x", "--priority", "urgent"]) == 2  # a usage error, one line
    assert "urgent" in capsys.readouterr().err


def test_the_reaper_resends_a_low_job_to_the_low_list(redis_url, tiny_models, tmp_path):
    settings = make_settings(redis_url, tiny_models, tmp_path)
    queue = settings.queue_for(Mode.TEXT2IMG)
    normal_list, low_list = queue_list_of(queue, Priority.NORMAL), queue_list_of(queue, Priority.LOW)
    with Client(settings) as client:
        [job] = client.submit_batch([tiny("handed back")], priority=Priority.LOW).job_ids
        client.redis.delete(low_list)  # as if a worker took the message, then died mid-job
        ref = JobRef.parse(job)
        assert ref is not None
        batch, index = ref.batch_id, ref.index
        client.status_store.receive(batch, [(index, 1)])
        client.status_store.start(job, "dead-worker", 2, {**tiny("handed back"), "seed": 1})
        status = client.status_store
        leases = LeaseStore(client.redis, status.keys, settings.lease_ttl_s)
        manifests = manifest_writer(status, client.storage)
        delivery = Delivery(settings, "reaper-test", status, leases, JobLog(), StorePool(1), never, manifests)
        assert delivery.resend(ref) == 1
        assert client.redis.llen(normal_list) == 0
        [raw] = client.redis.lrange(low_list, 0, -1)
        envelope = json.loads(raw)
        assert envelope["properties"]["priority"] == 9
        _, kwargs, _ = json.loads(base64.b64decode(envelope["body"]))
        assert [j["index"] for j in kwargs["jobs"]] == [index]
        client.redis.delete(low_list)
