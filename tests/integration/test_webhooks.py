"""Webhooks end to end: a real API (with its dispatcher), a real worker, a real https receiver.

The receiver verifies every delivery with the Standard Webhooks library and the tenant's
secret from `GET /v1/webhooks/secret`; loopback receivers are let through by the setting made
for this, and the API trusts the test CA through SSL_CERT_FILE.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook as Verifier

from kandinsky_batch.settings import Settings
from producer.client import Client
from tests.conftest import WorkerProcess
from tests.helpers.tls import make_certificates
from tests.helpers.webhook_receiver import Receiver, running_receiver
from tests.integration.conftest import auth, free_port, slow_worker, wait_for

SPEC: dict[str, Any] = {"prompt": "a lighthouse", "height": 64, "width": 64, "num_inference_steps": 10,
                        "prior_num_inference_steps": 2}  # fmt: skip
STEP_SLEEP_S = 0.35  # a job runs for ~4 s: long enough for progress deliveries 2 s apart
GIVE_UP_S = 4.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    make_certificates(folder)
    return folder


@pytest.fixture(scope="module")
def api_settings(module_settings: Settings) -> Settings:
    return module_settings.model_copy(
        update={
            "api_port": free_port(),
            "webhook_allow_loopback": True,
            "webhook_retry_base_s": 0.3,
            "webhook_retry_max_s": 1.0,
            "webhook_give_up_s": GIVE_UP_S,
            "webhook_timeout_s": 30.0,
        }
    )


@pytest.fixture(scope="module")
def api_env(certs: Path) -> dict[str, str]:
    return {"SSL_CERT_FILE": str(certs / "ca.crt")}


@pytest.fixture(scope="module")
def worker(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """A real worker whose steps are slowed, so jobs run long enough to report progress."""
    with slow_worker(module_settings, tmp_path_factory, STEP_SLEEP_S) as proc:
        yield proc


@pytest.fixture(scope="module")
def receiver(certs: Path) -> Iterator[Receiver]:
    with running_receiver(certs, slow_s=25.0) as found:
        yield found


@pytest.fixture(scope="module")
def secret(server: str, acme_key: str) -> str:
    answer = httpx.get(f"{server}/v1/webhooks/secret", headers=auth(acme_key))
    assert answer.status_code == 200
    found: str = answer.json()["secret"]
    assert found.startswith("whsec_")
    return found


def submit(server: str, key: str, **fields: Any) -> str:
    answer = httpx.post(f"{server}/v1/jobs", json={**SPEC, **fields}, headers=auth(key))
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


def deliveries_for(receiver: Receiver, job_id: str, kind: str) -> list[Any]:
    return [r for r in receiver.of_type(kind) if r.event["data"].get("job_id") == job_id]


def test_a_job_reports_started_progress_and_completed_each_signed(server, acme_key, receiver, secret):
    """Every delivery verifies with the tenant's secret; progress comes at most once per 2 s."""
    events = ["started", "progress", "completed"]
    job_id = submit(server, acme_key, webhook=receiver.url("/ok"), webhook_events=events)
    wait_for(lambda: deliveries_for(receiver, job_id, "job.completed"), 60, "job.completed")
    started = deliveries_for(receiver, job_id, "job.started")
    progress = deliveries_for(receiver, job_id, "job.progress")
    [completed] = deliveries_for(receiver, job_id, "job.completed")
    assert len(started) == 1 and started[0].event["data"]["state"] == "running"
    assert completed.event["data"]["state"] == "succeeded" and len(completed.event["data"]["outputs"]) == 1
    assert progress, "a 4 s job sends progress"
    steps = [r.event["data"]["step"] for r in progress]
    assert steps == sorted(steps) and all(
        0 < r.event["data"]["step"] <= r.event["data"]["total"] for r in progress
    )
    stamps = [r.event["timestamp"] for r in progress]
    assert all(b - a >= 1.9 for a, b in itertools.pairwise(stamps)), stamps
    verifier = Verifier(secret)
    for delivery in [*started, *progress, completed]:
        assert verifier.verify(delivery.body, delivery.headers)["data"]["job_id"] == job_id
        assert delivery.headers["webhook-id"].startswith("msg_")
    with pytest.raises(Exception, match="signature"):
        Verifier("whsec_" + "A" * 43).verify(completed.body, completed.headers)


def test_a_receiver_answering_500_gets_the_same_message_again_until_it_takes_it(
    server, acme_key, receiver, secret
):
    job_id = submit(server, acme_key, webhook=receiver.url("/flaky"))
    tries = wait_for(
        lambda: [r for r in deliveries_for(receiver, job_id, "job.completed") if r.answered == 200] and
        deliveries_for(receiver, job_id, "job.completed"),
        60, "a delivered retry",
    )  # fmt: skip
    assert [r.answered for r in tries] == [500, 500, 200]
    assert len({r.headers["webhook-id"] for r in tries}) == 1  # one message, tried three times
    assert tries[1].at - tries[0].at >= 0.25  # backed off, not hammered
    for attempt in tries:
        Verifier(secret).verify(attempt.body, attempt.headers)


def test_a_dead_receiver_is_given_up_on_and_listed(server, acme_key, keys, receiver):
    job_id = submit(server, acme_key, webhook=receiver.url("/down"))

    def dead() -> list[Any]:
        answer = httpx.get(f"{server}/v1/webhooks/dead", headers=auth(acme_key)).json()
        return [d for d in answer["deliveries"] if d["data"].get("job_id") == job_id]

    [entry] = wait_for(dead, 60, "a dead delivery")
    assert entry["type"] == "job.completed" and entry["url"] == receiver.url("/down")
    assert entry["attempts"] >= 2 and "HTTP 500" in entry["last_error"]
    tried = deliveries_for(receiver, job_id, "job.completed")
    assert len(tried) == entry["attempts"] and tried[-1].at - tried[0].at <= GIVE_UP_S + 1
    other = httpx.get(f"{server}/v1/webhooks/dead", headers=auth(keys["globex"])).json()
    assert all(d["data"].get("job_id") != job_id for d in other["deliveries"])  # not another tenant's


def test_a_batch_webhook_hears_of_every_job_and_of_the_batch(server, acme_key, receiver):
    lines = "\n".join(
        json.dumps({**SPEC, "prompt": f"a {w}", "num_inference_steps": 2}) for w in ("cat", "dog", "owl")
    )
    answer = httpx.post(
        f"{server}/v1/batches",
        params={"webhook": receiver.url("/ok"), "webhook_events": "completed"},
        content=lines.encode(),
        headers={**auth(acme_key), "Content-Type": "application/x-ndjson"},
    )
    assert answer.status_code == 202, answer.text
    batch_id = answer.json()["batch_id"]
    [done] = wait_for(
        lambda: [r for r in receiver.of_type("batch.completed") if r.event["data"]["batch_id"] == batch_id],
        90, "batch.completed",
    )  # fmt: skip
    assert done.event["data"]["counts"]["succeeded"] == 3
    # Queued before `batch.completed`, but sent from the same pool: the last may land just after it.
    every_job = {f"{batch_id}-{i}" for i in range(3)}

    def heard_every_job() -> bool:
        return every_job <= {r.event["data"]["job_id"] for r in receiver.of_type("job.completed")}

    wait_for(heard_every_job, 30, "every job's job.completed")


def test_a_slow_receiver_delays_neither_generation_nor_other_deliveries(server, acme_key, receiver):
    slow = submit(server, acme_key, webhook=receiver.url("/slow"), num_inference_steps=2)
    fast = submit(server, acme_key, webhook=receiver.url("/ok"), num_inference_steps=2)
    wait_for(lambda: deliveries_for(receiver, fast, "job.completed"), 30, "the other receiver's delivery")
    state = httpx.get(f"{server}/v1/jobs/{slow}", headers=auth(acme_key)).json()["state"]
    assert state == "succeeded"  # generation went on while the slow receiver held its delivery
    assert not [r for r in deliveries_for(receiver, slow, "job.completed") if r.answered]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"webhook": "http://example.com/hook"}, "webhook"),
        ({"webhook": "https://user:pw@example.com/hook"}, "webhook"),
        ({"webhook": "https://10.0.0.7/hook"}, "webhook"),
        ({"webhook": "https://169.254.169.254/latest"}, "webhook"),
        ({"webhook": "https://example.com/hook", "webhook_events": ["finished"]}, "webhook_events"),
        ({"webhook_events": ["completed"]}, "webhook_events"),
        ({"webhook": 7}, "webhook"),
    ],
)
def test_bad_webhooks_are_refused_at_submit_naming_the_field(server, acme_key, fields, named):
    answer = httpx.post(f"{server}/v1/jobs", json={**SPEC, **fields}, headers=auth(acme_key))
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert named in answer.json()["fields"]


def test_garbage_on_the_event_stream_and_delivery_queue_stops_nothing(
    server, api_settings, acme_key, receiver
):
    with Client(api_settings) as client:
        keys = client.status_store.keys
        client.redis.xadd(keys.events(), {"job": "\xff not a job", "state": "exploded"})
        client.redis.xadd(keys.events(), {"junk": "1"})
        client.redis.hset(keys.webhook_deliveries(), "msg_garbage", "{not json")
        client.redis.zadd(keys.webhook_due(), {"msg_garbage": 0, "msg_missing": 0})
    job_id = submit(server, acme_key, webhook=receiver.url("/ok"), num_inference_steps=2)
    wait_for(lambda: deliveries_for(receiver, job_id, "job.completed"), 60, "a delivery after the garbage")
    assert httpx.get(f"{server}/healthz").status_code == 200


def test_usage_counts_the_tenants_jobs_and_images(server, acme_key, keys):
    """Jobs by state and images stored, per tenant; an admin key reads every tenant's."""
    mine = httpx.get(f"{server}/v1/usage", headers=auth(acme_key)).json()["tenants"]
    assert set(mine) == {"acme"}
    assert mine["acme"]["succeeded"] >= 1 and mine["acme"]["images_succeeded"] >= mine["acme"]["succeeded"]
    everyone = httpx.get(f"{server}/v1/usage", headers=auth(keys["admin"])).json()["tenants"]
    assert everyone["acme"]["succeeded"] >= mine["acme"]["succeeded"]
    hidden = httpx.get(f"{server}/v1/usage", params={"tenant": "ops"}, headers=auth(acme_key))
    assert hidden.status_code == 404
