"""Weighted fair share between tenants inside a queue, on a real Redis and a real worker.

The store's order first, with no worker: messages are taken the way workers take them
(tests/helpers/tenants.py, `drain`), and the shares are counted by the time half the jobs are
taken. Then real worker processes on the tiny models: a small tenant's single job is served
within two micro-batches behind a big tenant's backlog, and two tenants of equal weight finish
equal shares.
"""

from __future__ import annotations

import base64
import itertools
import json
import statistics
import time
import uuid
from collections import Counter
from typing import Any

import pytest

from kandinsky_batch.enqueue import enqueue
from kandinsky_batch.keys import NO_TENANT, TENANT_HEADER, kombu_list, queue_list_of
from kandinsky_batch.schema import JobState, Mode, Priority
from kandinsky_batch.store.apikeys import ApiKeys
from kandinsky_batch.store.taken import TakenStore
from kandinsky_batch.wire import validate_spec
from producer.cli.main import main
from producer.client import Client
from tests.conftest import make_settings
from tests.helpers.tenants import drain, submit_as
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

TINY: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


def jobs(n: int, prompt: str = "p") -> list[dict[str, Any]]:
    return [{"prompt": f"{prompt} {i}", **TINY} for i in range(n)]


def tenant_of(job: str) -> str:
    return job.split("-", 1)[0]


def shares_at_half(order: list[str]) -> Counter[str]:
    """How many jobs of each tenant were taken (or finished) by the time half of them were."""
    return Counter(tenant_of(job) for job in order[: len(order) // 2])


@pytest.fixture
def client(redis_url, tiny_models, tmp_path):
    # Micro-batches of 8 images (each message carries at most one), bulk chunks of 64 jobs.
    with Client(make_settings(redis_url, tiny_models, tmp_path)) as c:
        yield c


def test_two_tenants_of_equal_weight_are_served_equal_shares(client: Client) -> None:
    queue = client.settings.queue_for(Mode.TEXT2IMG)
    submit_as(client, "big", jobs(200))  # all of it first
    submit_as(client, "other", jobs(200))
    order = [job for message in drain(client.status_store, queue) for job in message]
    shares = shares_at_half(order)
    print(f"equal weights, taken by half-way: {dict(shares)}")
    assert len(order) == 400 and min(shares.values()) / max(shares.values()) >= 0.8


def test_weights_of_two_to_one_give_shares_within_15_percent_of_two_to_one(client: Client) -> None:
    queue = client.settings.queue_for(Mode.TEXT2IMG)
    ApiKeys(client.redis, client.status_store.keys).set_weight("heavy", 2)
    submit_as(client, "light", jobs(300))
    submit_as(client, "heavy", jobs(300))
    order = [job for message in drain(client.status_store, queue) for job in message]
    shares = shares_at_half(order)
    ratio = shares["heavy"] / shares["light"]
    print(f"weights 2:1, taken by half-way: {dict(shares)}, ratio {ratio:.2f}")
    assert abs(ratio - 2) <= 0.15 * 2


def test_a_newcomer_is_served_next_and_each_tenant_keeps_its_order(client: Client) -> None:
    queue = client.settings.queue_for(Mode.TEXT2IMG)
    big = submit_as(client, "big", jobs(1000))
    [small] = submit_as(client, "small", jobs(1))
    order = drain(client.status_store, queue)
    # Behind only the message already fed onto the Celery list when it came
    assert [small] in order[:2]
    taken_big = [job for message in order for job in message if tenant_of(job) == "big"]
    assert taken_big == big  # first in, first out within a tenant
    assert all(len(message) <= client.settings.max_batch_size for message in order)


def test_a_take_that_does_not_fit_leaves_one_message_on_the_celery_list(client: Client) -> None:
    """A lone job's micro-batch has room for 7 images; the big tenant's fed message has 8. Put back,
    it must be alone on the Celery list: a message fed in the meantime would wait there too, ahead
    of any tenant that comes next."""
    queue = client.settings.queue_for(Mode.TEXT2IMG)
    big = submit_as(client, "big", jobs(24))  # three messages of 8: one fed onto the Celery list
    store = client.status_store
    taken = TakenStore(store.redis, store.keys, ttl_s=60)
    [fed] = taken.take("w", queue, most=7, room=7)  # the Celery list's message, whatever its size
    assert fed.queue_list == queue_list_of(queue, Priority.NORMAL)
    assert store.redis.llen(fed.queue_list) == 0  # nothing fed behind the worker's back
    assert taken.put_back("w", fed.entry)
    assert store.redis.llen(fed.queue_list) == 1
    order = [job for message in drain(store, queue) for job in message]
    assert order == big  # and first in, first out, none lost


def test_priorities_stay_strict_between_tenants(client: Client) -> None:
    queue = client.settings.queue_for(Mode.TEXT2IMG)
    low = submit_as(client, "a", jobs(8), Priority.LOW)
    normal = submit_as(client, "b", jobs(8))
    high = submit_as(client, "c", jobs(8), Priority.HIGH)
    order = [job for message in drain(client.status_store, queue, most=3) for job in message]
    assert order == high + normal + low


def test_a_delayed_resend_comes_back_through_its_tenants_fair_queue(client: Client) -> None:
    queue = client.settings.queue_for(Mode.TEXT2IMG)
    fair = client.status_store.fair
    [kept] = submit_as(client, "t", jobs(1, "fed"))  # fed onto the Celery list at once
    [behind] = submit_as(client, "t", jobs(1, "behind"))  # waits its turn in the structure
    spec = validate_spec(jobs(1)[0], client.settings)
    enqueue(client.status_store, client.settings, kept.rsplit("-", 1)[0], [(0, spec)], Priority.NORMAL, 0.05)
    assert fair.waiting(queue)[Priority.NORMAL] == 2  # delayed: not waiting yet
    time.sleep(0.1)
    assert client.status_store.release_due() == 1
    assert fair.waiting(queue)[Priority.NORMAL] == 3
    [resent, _] = client.redis.lrange(
        client.status_store.keys.fair_tenant(queue, Priority.NORMAL, "t"), 0, -1
    )
    assert json.loads(resent.partition(b"\n")[2])["headers"][TENANT_HEADER] == "t"
    assert drain(client.status_store, queue) == [[kept], [behind], [kept]]  # behind the tenant's others


def raw_envelope(batch_id: str, queue: str, priority: int) -> str:
    """An outside sender's message, as docs/message-format.md builds it (no tenant header)."""
    kwargs = {
        "v": 1,
        "batch_id": batch_id,
        "shared": {},
        "jobs": [{"index": 0, "spec": {"prompt": "x", **TINY}}],
    }
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    task_id = str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(json.dumps(body).encode()).decode(),
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "headers": {"lang": "py", "task": "kandinsky_batch.run_jobs", "id": task_id},
            "properties": {
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": priority,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def test_an_outside_senders_message_joins_the_fair_share_once(client: Client) -> None:
    queue = client.settings.queue_for(Mode.TEXT2IMG)
    fair = client.status_store.fair
    client.redis.lpush(queue, raw_envelope("outside0", queue, 0))  # the doc's LPUSH: normal
    client.redis.lpush(kombu_list(queue, 9), raw_envelope("outside9", queue, 9))  # low
    client.redis.lpush(queue, b"not a message")  # left for a worker to drop with its warning
    assert fair.adopt([queue]) == 2 and fair.adopt([queue]) == 0  # marked: moved once
    assert fair.waiting(queue) == {Priority.HIGH: 1, Priority.NORMAL: 1, Priority.LOW: 1}
    assert fair.feed([queue]) == 2  # onto the lists of their priorities
    [fed] = client.redis.lrange(queue_list_of(queue, Priority.NORMAL), 0, -1)
    envelope = json.loads(fed)
    assert envelope["headers"][TENANT_HEADER] == NO_TENANT and envelope["properties"]["priority"] == 3
    assert fair.adopt([queue]) == 0


def test_keys_set_a_tenants_weight(cli_env, module_settings, capsys) -> None:
    assert main(["keys", "create", "--tenant", "acme", "--weight", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tenant"] == "acme"
    assert main(["keys", "weight", "globex", "2"]) == 0 and main(["keys", "weight", NO_TENANT, "5"]) == 0
    capsys.readouterr()
    assert main(["keys", "list", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {r["tenant"]: r["weight"] for r in listed} == {"acme": 3}
    with Client(module_settings) as client:
        assert ApiKeys(client.redis, client.status_store.keys).weights() == {
            "acme": 3,
            "globex": 2,
            NO_TENANT: 5,
        }
    assert main(["keys", "weight", "globex", "0"]) == 2  # a usage error, one line


# -- real workers ------------------------------------------------------------------------------


def test_a_small_tenants_job_is_served_within_two_micro_batches_behind_a_big_backlog(
    redis_url, tiny_models, tmp_path, start_worker
) -> None:
    settings = make_settings(redis_url, tiny_models, tmp_path, max_batch_size=2)
    with Client(settings) as client:
        big = submit_as(client, "big", jobs(60))
        start_worker(settings, step_sleep=0.2)
        wait_for(
            lambda: client.status_store.job(big[4]).state is not JobState.QUEUED, 60, "the backlog to run"
        )
        sent = time.time()
        [small] = submit_as(client, "small", jobs(1, "small"))
        done = client.wait(small, timeout=60, poll_s=0.05)
        waited = (done.started_at or 0) - sent
        started = sorted(s for s in (client.status_store.job(j).started_at for j in big) if s)
        client.cancel(big[0].rsplit("-", 1)[0])
    assert done.state is JobState.SUCCEEDED
    ahead = [s for s in started if sent < s < (done.started_at or 0)]
    gaps = [b - a for a, b in itertools.pairwise(started) if b - a > 0.05]
    micro_batch = statistics.median(gaps)
    print(f"small tenant: waited {waited:.2f} s, {len(ahead)} big jobs started meanwhile, "
          f"a micro-batch {micro_batch:.2f} s")  # fmt: skip
    assert len(ahead) <= 2 * settings.max_batch_size  # at most two micro-batches went first


def test_two_tenants_of_equal_weight_finish_equal_shares(
    redis_url, tiny_models, tmp_path, start_worker
) -> None:
    settings = make_settings(redis_url, tiny_models, tmp_path, max_batch_size=2)
    with Client(settings) as client:
        first = submit_as(client, "first", jobs(24))
        second = submit_as(client, "second", jobs(24))
        start_worker(settings, step_sleep=0.0)
        finals = [client.wait(job, timeout=180, poll_s=0.2) for job in first + second]
    assert {f.state for f in finals} == {JobState.SUCCEEDED}
    order = [f.job_id for f in sorted(finals, key=lambda f: f.finished_at or 0)]
    shares = shares_at_half(order)
    print(f"equal weights on a worker, finished by half-way: {dict(shares)}")
    assert min(shares.values()) / max(shares.values()) >= 0.8


def test_a_small_tenants_jobs_one_after_another_each_wait_at_most_two_micro_batches(
    redis_url, tiny_models, tmp_path, start_worker
) -> None:
    """A lone job leaves room in its micro-batch; filling it must not take the big tenant's next
    messages past that room (those would go back ahead of every tenant, for the next small job)."""
    settings = make_settings(redis_url, tiny_models, tmp_path, max_batch_size=4)
    with Client(settings) as client:
        big = submit_as(client, "big", jobs(120))
        start_worker(settings, step_sleep=0.1)
        wait_for(
            lambda: client.status_store.job(big[8]).state is not JobState.QUEUED, 60, "the backlog to run"
        )
        ahead_of_each = []
        for n in range(3):
            sent = time.time()
            [small] = submit_as(client, "small", jobs(1, f"small {n}"))
            done = client.wait(small, timeout=60, poll_s=0.05)
            assert done.state is JobState.SUCCEEDED
            started = [client.status_store.job(j).started_at for j in big]
            ahead_of_each.append(sum(1 for s in started if s and sent < s < (done.started_at or 0)))
        client.cancel(big[0].rsplit("-", 1)[0])
    print(f"big jobs started before each small one: {ahead_of_each}")
    assert max(ahead_of_each) <= 2 * settings.max_batch_size
