"""`POST /v1/jobs` as it runs on the event loop: one round trip for a key seen before, an answer
made from what the submit wrote, and a refusal at the queue's high-water mark; and the SDK's
`Client.submit`, the same one-job submit on a sync client. A real uvicorn process and Redis, no
worker (jobs stay queued)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from kandinsky_batch.batch_ids import batch_id_for_key, new_batch_id
from kandinsky_batch.keys import JobRef, queue_list_of
from kandinsky_batch.schema import JobState, Mode, Priority
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from kandinsky_batch.submit_one import ROOM_POLL_S, OneJob, submit_one
from kandinsky_batch.wire import validate_spec
from producer.client import Client
from tests.helpers.tenants import clear
from tests.integration.conftest import auth, free_port

pytestmark = pytest.mark.integration

HIGH_WATER = 6
BODY = {"prompt": "a quiet harbour", "height": 64, "width": 64}


@pytest.fixture(scope="module")
def worker() -> Iterator[None]:
    yield None


@pytest.fixture(scope="module")
def api_settings(module_settings: Settings) -> Settings:
    update = {"api_port": free_port(), "webhooks": False, "queue_high_water": HIGH_WATER}
    return module_settings.model_copy(update=update)


@pytest.fixture
def client(api_settings: Settings) -> Iterator[Client]:
    with Client(api_settings) as sdk:
        yield sdk
        clear(sdk.status_store, api_settings.queue_for(Mode.TEXT2IMG))  # room for the next test


@pytest.fixture
def keys(client: Client) -> ApiKeys:
    return ApiKeys(client.redis, client.status_store.keys)


def post(server: str, key: str, **extra: Any) -> httpx.Response:
    return httpx.post(f"{server}/v1/jobs", json={**BODY, **extra}, headers=auth(key), timeout=30)


def test_the_answer_to_a_submit_is_what_a_read_of_the_job_gives(server: str, keys: ApiKeys, client: Client):
    _, secret = keys.create("harbour")
    for priority in ("normal", "low"):
        answer = httpx.post(
            f"{server}/v1/jobs", params={"priority": priority}, json=BODY, headers=auth(secret), timeout=30
        )
        assert answer.status_code == 202, answer.text
        made = answer.json()
        read = httpx.get(made["urls"]["get"], headers=auth(secret), timeout=30).json()
        assert made == read  # nothing moved in between: state, seed, times, priority, queue position
        assert made["priority"] == priority and made["queue"]["position"] is not None
        assert answer.headers["location"] == made["urls"]["get"]
        assert client.status_store.job(made["job_id"]).seed == made["seed"]


def test_a_key_revoked_after_it_was_seen_is_refused_at_once(server: str, keys: ApiKeys, client: Client):
    record, secret = keys.create("revoked-later")
    for _ in range(2):  # the second submit takes the one-round-trip path
        assert post(server, secret).status_code == 202
    assert keys.revoke(record.id)
    refused = post(server, secret)
    assert refused.status_code == 401 and refused.headers["content-type"] == "application/problem+json"
    assert client.status_store.usage("revoked-later")["queued"] == 2  # nothing was submitted


def test_a_key_whose_cap_changed_is_held_to_the_new_one(server: str, keys: ApiKeys, client: Client):
    record, secret = keys.create("recapped", max_queued=100)
    for _ in range(2):
        assert post(server, secret).status_code == 202
    digest = next(d for d, raw in client.redis.hscan_iter(keys.key) if json.loads(raw)["id"] == record.id)
    changed = {**json.loads(client.redis.hget(keys.key, digest)), "max_queued": 2}  # type: ignore[arg-type]
    client.redis.hset(keys.key, digest, json.dumps(changed))
    over = post(server, secret)  # made for the cap last seen (100), submitted for the new one (2)
    assert over.status_code == 429 and "cap of 2" in over.json()["detail"], over.text
    assert client.status_store.usage("recapped")["queued"] == 2


def test_a_key_over_its_rate_is_refused_on_the_one_round_trip_path(server: str, keys: ApiKeys):
    _, secret = keys.create("slow", rate_per_s=0.2)
    assert post(server, secret).status_code == 202
    refused = post(server, secret)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused.text


def test_a_submit_at_the_high_water_mark_gets_429_and_queues_nothing(
    server: str, keys: ApiKeys, client: Client, api_settings: Settings
):
    queue = api_settings.queue_for(Mode.TEXT2IMG)
    clear(client.status_store, queue)
    _, secret = keys.create("flood")
    for _ in range(HIGH_WATER):
        assert post(server, secret).status_code == 202
    full = post(server, secret)
    assert full.status_code == 429 and full.headers["retry-after"] == "5", full.text
    assert (
        full.headers["content-type"] == "application/problem+json" and "high-water" in full.json()["detail"]
    )
    assert client.status_store.usage("flood")["queued"] == HIGH_WATER
    assert client.redis.rpop(queue_list_of(queue, Priority.NORMAL)) is not None  # a worker takes one message
    assert post(server, secret).status_code == 202


# -- the SDK's one-job submit: the same chunk and record, on a sync client ---------------------


def test_a_one_job_answer_is_what_a_read_of_the_job_gives(client: Client, api_settings: Settings):
    """`OneJob.queued`, the API's answer to a new job, against a read of what `submit_one` wrote."""
    for priority in (Priority.HIGH, Priority.NORMAL, Priority.LOW):
        job = OneJob.seeded(validate_spec(BODY, api_settings), priority)
        batch_id = new_batch_id()
        ref = submit_one(client.status_store, api_settings, job, batch_id)
        read = client.status_store.job(ref)
        assert job.queued(batch_id, int(read.created_at or 0)) == read
        assert read.seed == job.seed and read.priority is priority


def test_an_sdk_idempotency_key_gives_the_same_job_and_sends_it_once(client: Client, api_settings: Settings):
    queue = api_settings.queue_for(Mode.TEXT2IMG)
    job = client.submit(BODY, idempotency_key="sdk-order-1")
    assert client.submit(BODY, idempotency_key="sdk-order-1") == job
    assert client.submit({**BODY, "idempotency_key": "sdk-order-1"}) == job  # the spec's field: the same key
    assert client.submit({**BODY, "idempotency_key": "other"}, idempotency_key="sdk-order-1") == job
    assert client.submit(BODY, idempotency_key="sdk-order-2") != job
    assert client.status_store.queue_length(queue) == 2  # one message per key
    assert JobRef.parse(job) == JobRef(batch_id_for_key("sdk-order-1"), 0)  # no tenant: the plain hash


def test_the_sdk_waits_at_the_high_water_mark_where_the_api_refuses(client: Client, api_settings: Settings):
    queue = api_settings.queue_for(Mode.TEXT2IMG)
    for _ in range(HIGH_WATER):
        client.submit(BODY)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(client.submit, BODY)
        time.sleep(3 * ROOM_POLL_S)
        assert not waiting.done() and client.status_store.queue_length(queue) == HIGH_WATER
        assert (
            client.redis.rpop(queue_list_of(queue, Priority.NORMAL)) is not None
        )  # a worker takes one message
        assert client.status_store.job(waiting.result(timeout=10)).state is JobState.QUEUED
