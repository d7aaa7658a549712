"""Priorities and backpressure on the real broker lists: low jobs wait behind normal ones, and the
producer pauses while a queue's lists (both priorities together) hold the high-water mark."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from typing import Any

import pytest

from kandinsky_batch.errors import NotFound
from kandinsky_batch.keys import TASK_NAME, JobRef, queue_lists
from kandinsky_batch.manifest import manifest_writer
from kandinsky_batch.schema import JobState, Mode, Priority
from kandinsky_batch.wire import build_message, validate_spec
from producer.cli import main
from producer.client import Client
from tests.conftest import WorkerProcess, make_settings
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


def test_a_worker_takes_every_normal_job_before_any_low_one(redis_url, tiny_models, tmp_path):
    # Micro-batches of 2 images: the worker fills its first one with the two normal jobs (Celery
    # hands it one, it takes the other, normal before low), and the low ones come after.
    settings = make_settings(redis_url, tiny_models, tmp_path, chunk_size=1, max_batch_size=2)
    normal_list, low_list = queue_lists(settings.queue_for(Mode.TEXT2IMG))
    with Client(settings) as client:
        low = client.submit_batch([tiny(f"low {i}") for i in range(3)], priority=Priority.LOW)
        # An open-format message sent with kombu's low priority, with no status recorded first.
        raw_batch = f"raw{uuid.uuid4().hex[:8]}"
        spec = validate_spec(tiny("raw low"), settings)
        client.app.send_task(
            TASK_NAME, kwargs=build_message(raw_batch, [(0, spec)]), queue=normal_list, priority=9
        )
        normal = client.submit_batch([tiny(f"normal {i}") for i in range(2)])
        assert (client.redis.llen(normal_list), client.redis.llen(low_list)) == (2, 4)
        assert client.status(low.job_ids[0]).priority is Priority.LOW  # type: ignore[union-attr]

        proc = WorkerProcess(settings, tmp_path / "w.log").start()
        try:
            for batch in (low.batch_id, normal.batch_id, raw_batch):
                wait_known_and_done(client, batch)
        finally:
            assert proc.stop() == 0
        low_jobs = list(client.jobs(low.batch_id)) + list(client.jobs(raw_batch))
        normal_jobs = list(client.jobs(normal.batch_id))
    assert {j.state for j in low_jobs + normal_jobs} == {JobState.SUCCEEDED}
    assert {j.priority for j in low_jobs} == {Priority.LOW}
    assert {j.priority for j in normal_jobs} == {Priority.NORMAL}
    started_normal = [j.started_at or 0 for j in normal_jobs]
    started_low = [j.started_at or 0 for j in low_jobs]
    assert max(started_normal) < min(started_low)


def test_submit_pauses_at_the_high_water_mark_counting_both_priority_lists(redis_url, tiny_models, tmp_path):
    settings = make_settings(redis_url, tiny_models, tmp_path, chunk_size=1, queue_high_water=3)
    normal_list, low_list = queue_lists(settings.queue_for(Mode.TEXT2IMG))
    with Client(settings) as client:
        client.submit_batch([tiny("waiting low")], priority=Priority.LOW)  # 1 in the low list
        done = threading.Event()

        def submit() -> None:
            client.submit_batch([tiny(f"p{i}") for i in range(4)])
            done.set()

        thread = threading.Thread(target=submit, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while client.redis.llen(normal_list) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # had it ignored the low list, it would have sent a third message by now
        assert (client.redis.llen(normal_list), client.redis.llen(low_list)) == (2, 1)
        assert not done.is_set()
        client.redis.rpop(low_list)  # a worker took the low one: room for one more
        deadline = time.monotonic() + 30
        while client.redis.llen(normal_list) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert client.redis.llen(normal_list) == 3 and not done.is_set()
        client.redis.delete(normal_list)
        assert done.wait(30)
        thread.join(5)


def test_the_cli_submits_at_low_priority_and_status_shows_it(cli_env, client: Client, capsys):
    code = main(["submit", "--prompt", "a quiet harbor", "--priority", "low", "--json", *TINY_FLAGS])
    submitted = json.loads(capsys.readouterr().out)
    assert code == 0 and submitted["sent"] == 1
    [job] = submitted["job_ids"]
    assert main(["status", job, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["priority"]) == ("queued", "low")
    low_list = queue_lists(client.settings.queue_for(Mode.TEXT2IMG))[1]
    assert client.redis.llen(low_list) == 1
    client.redis.delete(low_list)  # nothing consumes this module's queues
    assert main(["submit", "--prompt", "x", "--priority", "urgent"]) == 2  # a usage error, one line
    assert "urgent" in capsys.readouterr().err


def test_the_reaper_resends_a_low_job_to_the_low_list(redis_url, tiny_models, tmp_path):
    settings = make_settings(redis_url, tiny_models, tmp_path)
    normal_list, low_list = queue_lists(settings.queue_for(Mode.TEXT2IMG))
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
