"""The API's queue metrics and Flower, against a real worker, a real API and a real Flower.

A slowed worker holds one job (one job per message here) while the others wait, so the queue
is in a known state long enough to read it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kandinsky_batch.keys import queue_list_of
from kandinsky_batch.schema import Mode, Priority
from kandinsky_batch.settings import Settings
from producer.api.metrics import QueueCollector
from producer.client import Client
from producer.launch import worker_env
from tests.conftest import WorkerProcess, make_settings
from tests.integration.conftest import free_port, slow_worker, wait_for

pytestmark = pytest.mark.integration
SLOW = {"height": 64, "width": 64, "num_inference_steps": 30, "prior_num_inference_steps": 2}
STEP_SLEEP_S = 0.5  # a job holds the worker ~15 s


@pytest.fixture(scope="module")
def module_settings(redis_url: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # One job per message and micro-batches of one image: the worker takes no extra messages, so
    # what waits stays on the lists to be counted, and every job is a Celery task Flower lists.
    # Flower sees workers and tasks only through Celery's events, which are off by default.
    root = tmp_path_factory.mktemp("queue-metrics")
    return make_settings(redis_url, tiny_models, root, chunk_size=1, max_batch_size=1, celery_events=True)


@pytest.fixture(scope="module")
def worker(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with slow_worker(module_settings, tmp_path_factory, STEP_SLEEP_S) as proc:
        yield proc


def scrape(server: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{server}/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_queue_metrics_count_waiting_jobs_messages_and_busy_workers_then_drain(server, module_settings):
    queue = module_settings.queue_for(Mode.TEXT2IMG)
    other = module_settings.queue_for(Mode.INPAINT)
    with Client(module_settings) as client:
        batch = client.submit_batch([{"prompt": f"slow {i}", **SLOW} for i in range(4)])
        low = client.submit({"prompt": "low", **SLOW, "num_inference_steps": 2}, priority="low")
        first = f"{batch.batch_id}-0"
        wait_for(lambda: client.status_store.job(first).progress.step >= 1, 60, "the first job to run")
        high = client.submit({"prompt": "high", **SLOW, "num_inference_steps": 2}, priority="high")

        def settled() -> dict:
            found = scrape(server)
            return found if value(found, "kandinsky_batch_busy_workers", queue=queue) == 1 else {}

        found = wait_for(settled, 30, "the worker to show busy")
        assert client.status_store.job(first).state.value == "running"  # still holding it
        assert value(found, "kandinsky_batch_queue_messages", queue=queue, priority="normal") == 3
        assert value(found, "kandinsky_batch_queue_messages", queue=queue, priority="low") == 1
        assert value(found, "kandinsky_batch_queue_messages", queue=queue, priority="high") == 1
        assert value(found, "kandinsky_batch_queue_jobs", queue=queue) == 5  # 3 normal + 1 low + 1 high
        assert value(found, "kandinsky_batch_jobs_in_flight", queue=queue) == 1
        assert value(found, "kandinsky_batch_queue_jobs", queue=other) == 0
        assert value(found, "kandinsky_batch_busy_workers", queue=other) == 0
        age = value(found, "kandinsky_batch_oldest_queued_seconds", queue=queue)
        created = client.status_store.job(low).created_at or 0.0
        assert 0 < age <= time.time() - created + 5  # the oldest waiting job: the batch's, then the low one
        assert value(found, "kandinsky_batch_dead_letters") == 0

        client.cancel(batch.batch_id)
        client.cancel(low)
        client.cancel(high)
        client.wait(batch.batch_id, timeout=120)

        def drained() -> dict:
            found = scrape(server)
            idle = value(found, "kandinsky_batch_busy_workers", queue=queue) == 0
            return (
                found
                if idle
                and value(found, "kandinsky_batch_queue_messages", queue=queue, priority="normal") == 0
                else {}
            )

        found = wait_for(drained, 60, "the queue to drain")
        assert value(found, "kandinsky_batch_queue_jobs", queue=queue) == 0
        assert value(found, "kandinsky_batch_jobs_in_flight", queue=queue) == 0


def test_garbage_on_a_queue_is_a_message_with_no_age(redis_url, tiny_models, tmp_path):
    """Bytes that are not our message count as a message, with no age, and the scrape still works.

    No worker serves these queues, so the garbage stays where it was put.
    """
    settings = make_settings(redis_url, tiny_models, tmp_path)
    registry = CollectorRegistry(auto_describe=False)
    with Client(settings) as client:
        registry.register(QueueCollector(settings, client.status_store))
        queue = settings.queue_for(Mode.INTERPOLATE)
        lst = queue_list_of(queue, Priority.NORMAL)
        client.redis.lpush(lst, b"\xff\x00 not json", b'{"body": 5}')
        client.redis.hset(client.status_store.keys.queue_counts(), mapping={f"in:{lst}": "junk"})
        try:
            client.redis.hset(client.status_store.keys.queue_counts(), f"in:{lst}", 3)
            text = generate_latest(registry).decode()
            found = {(s.name, tuple(sorted(s.labels.items()))): s.value
                     for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip
            assert value(found, "kandinsky_batch_queue_messages", queue=queue, priority="normal") == 2
            assert value(found, "kandinsky_batch_oldest_queued_seconds", queue=queue) == 0
            assert value(found, "kandinsky_batch_queue_jobs", queue=queue) == 3
        finally:
            client.redis.delete(lst, client.status_store.keys.queue_counts())


@pytest.fixture(scope="module")
def flower(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    env = {**os.environ, **worker_env(module_settings), "FLOWER_UNAUTHENTICATED_API": "true"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "producer.flower", "flower",
             f"--port={port}", "--address=127.0.0.1"],
            env=env, stdout=out, stderr=out,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(url), 60, f"Flower ({log})")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthcheck", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_flower_shows_the_worker_and_the_tasks_of_a_batch(flower, worker, module_settings):
    with Client(module_settings) as client:
        batch = client.submit_batch(
            [{"prompt": f"seen {i}", **SLOW, "num_inference_steps": 2} for i in range(2)]
        )
        client.wait(batch.batch_id, timeout=120)

    def tasks_of_batch() -> list[dict]:
        tasks = httpx.get(f"{flower}/api/tasks", timeout=10).json()
        return [t for t in tasks.values() if batch.batch_id in (t.get("kwargs") or "")]

    found = wait_for(
        lambda: len(tasks_of_batch()) == 2 and tasks_of_batch(), 60, "the batch's tasks in Flower"
    )
    assert {t["state"] for t in found} == {"SUCCESS"} and {t["name"] for t in found} == {
        "kandinsky_batch.run_jobs"
    }
    ran = {t["worker"] for t in found}
    workers = wait_for(
        lambda: ran <= set(httpx.get(f"{flower}/api/workers", params={"refresh": "true"}, timeout=30).json()),
        60, "the worker in Flower's worker list",
    )  # fmt: skip
    assert workers
