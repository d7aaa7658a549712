"""The HTTP API: a real uvicorn process on loopback, a real Redis, a real worker, a real HTTP client.

Submit -> wait -> image; API keys and tenant isolation (another tenant's ids are "not found");
idempotency; `Prefer: wait`; bad bodies answered with problem documents while the server stays up.
"""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from producer.client import Client
from producer.launch import worker_env
from tests.integration.conftest import auth

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
PNG = b"\x89PNG\r\n\x1a\n"


def wait_done(http: httpx.Client, job_url: str, key: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(job_url, headers=auth(key)).json()
        if job["state"] in ("succeeded", "failed", "canceled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_every_route_needs_a_key(server: str):
    with httpx.Client(base_url=server) as http:
        for method, path in [("POST", "/v1/jobs"), ("GET", "/v1/jobs/b-0"), ("GET", "/v1/batches/b")]:
            answer = http.request(method, path, json={"prompt": "x"})
            assert answer.status_code == 401, (path, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["www-authenticate"] == "Bearer"
        assert http.get("/v1/jobs/b-0", headers=auth("kb_not-a-key")).status_code == 401


def test_submit_wait_and_fetch_the_image(server: str, acme_key: str):
    with httpx.Client(base_url=server, timeout=30) as http:
        answer = http.post(
            "/v1/jobs", json={"prompt": "a lighthouse at dawn", **TINY}, headers=auth(acme_key)
        )
        assert answer.status_code == 202, answer.text
        job = answer.json()
        assert job["state"] in ("queued", "running") and answer.headers["location"] == job["urls"]["get"]
        done = wait_done(http, job["urls"]["get"], acme_key)
        assert done["state"] == "succeeded" and done["seed"] is not None and len(done["outputs"]) == 1
        image = http.get(done["outputs"][0], headers=auth(acme_key))
        assert image.status_code == 200 and image.content.startswith(PNG)
        batch = http.get(f"/v1/batches/{done['batch_id']}", headers=auth(acme_key)).json()
        assert batch["done"] and batch["counts"]["succeeded"] == 1 and batch["tenant"] == "acme"


def test_prefer_wait_answers_with_the_finished_job(server: str, acme_key: str):
    with httpx.Client(base_url=server, timeout=90) as http:
        headers = {**auth(acme_key), "Prefer": "wait=60"}
        answer = http.post("/v1/jobs", json={"prompt": "waited for", **TINY}, headers=headers)
        assert answer.status_code == 200 and answer.json()["state"] == "succeeded", answer.text


def test_an_idempotency_key_gives_the_same_job_and_never_another_tenants(
    server: str, acme_key: str, keys: dict[str, str]
):
    with httpx.Client(base_url=server, timeout=30) as http:
        spec = {"prompt": "only once", **TINY}
        first = http.post("/v1/jobs", json=spec, headers={**auth(acme_key), "Idempotency-Key": "order-17"})
        again = http.post("/v1/jobs", json=spec, headers={**auth(acme_key), "Idempotency-Key": "order-17"})
        other = http.post(
            "/v1/jobs", json=spec, headers={**auth(keys["globex"]), "Idempotency-Key": "order-17"}
        )
        assert first.json()["job_id"] == again.json()["job_id"] != other.json()["job_id"]


def test_another_tenants_ids_are_not_found_and_an_admin_sees_them(
    server: str, acme_key: str, keys: dict[str, str]
):
    with httpx.Client(base_url=server, timeout=30) as http:
        job = http.post("/v1/jobs", json={"prompt": "acme's own", **TINY}, headers=auth(acme_key)).json()
        done = wait_done(http, job["urls"]["get"], acme_key)
        spy = auth(keys["globex"])
        for method, url in [
            ("GET", job["urls"]["get"]),
            ("POST", job["urls"]["cancel"]),
            ("GET", done["outputs"][0]),
            ("GET", f"/v1/batches/{job['batch_id']}"),
        ]:
            answer = http.request(method, url, headers=spy)
            assert answer.status_code == 404, (url, answer.status_code)
            assert answer.headers["content-type"] == "application/problem+json"
        assert http.get(job["urls"]["get"], headers=auth(keys["admin"])).json()["state"] == "succeeded"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"prompt": "x", "height": ', "body"),  # not JSON
        (b'["not", "an", "object"]', "body"),
        (b'{"prompt": "x", "height": 65}', "height"),
        (b'{"prompt": "x", "colour": "red"}', "colour"),
        (b'{"prompt": "x", "guidance_scale": NaN}', "guidance_scale"),
        (b'{"prompt": ""}', "spec"),
        (b"\xff\xfe not utf-8", "body"),
    ],
)
def test_bad_bodies_get_a_problem_naming_the_field_and_the_server_stays_up(
    server: str, acme_key: str, body: bytes, field: str
):
    with httpx.Client(base_url=server, timeout=30) as http:
        headers = {**auth(acme_key), "Content-Type": "application/json"}
        answer = http.post("/v1/jobs", content=body, headers=headers)
        assert answer.status_code == 422, answer.text
        problem = answer.json()
        assert answer.headers["content-type"] == "application/problem+json"
        assert problem["status"] == 422 and field in problem["fields"], problem
        assert http.get("/healthz").status_code == 200


def test_readyz_says_redis_and_storage_answer(server: str):
    answer = httpx.get(f"{server}/readyz", timeout=10)
    assert answer.status_code == 200 and answer.json() == {"status": "ready"}


def test_keys_list_shows_no_secret_and_revoke_stops_a_key(server: str, api_settings: Settings):
    with Client(api_settings) as client:
        record, secret = ApiKeys(client.redis, client.status_store.keys).create("short-lived")
    env = worker_env(api_settings)
    listed = subprocess.run([sys.executable, "-m", "producer.cli", "keys", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    assert record.id in listed and secret not in listed and "kb_" not in listed
    assert httpx.get(f"{server}/v1/batches/x", headers=auth(secret)).status_code == 404
    revoked = subprocess.run([sys.executable, "-m", "producer.cli", "keys", "revoke", record.id], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert revoked.returncode == 0
    assert httpx.get(f"{server}/v1/batches/x", headers=auth(secret)).status_code == 401
