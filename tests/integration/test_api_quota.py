"""Tenant limits and reads over a real uvicorn and Redis, with no worker so jobs stay queued:
the cap on unfinished jobs, usage counters, queue position and ETA, `{"source": URI}` batches,
and the cap on request bodies."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
import pytest

from kandinsky_batch.settings import Settings
from producer.client import Client
from tests.integration.conftest import auth, free_port, wait_for

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
BODY_LIMIT = 64 * 1024
ZERO_USAGE = {
    "queued": 0,
    "running": 0,
    "succeeded": 0,
    "failed": 0,
    "canceled": 0,
    "images_submitted": 0,
    "images_succeeded": 0,
    "gpu_seconds": 0.0,
    "cost": None,
    "by_mode": {},
}


@pytest.fixture(scope="module")
def worker() -> Iterator[None]:
    """No worker: every job stays queued until a test moves it."""
    yield None


@pytest.fixture(scope="module")
def api_settings(module_settings: Settings) -> Settings:
    """One job per message, so the cap refuses exactly the lines past it; a 64 KiB body cap."""
    return module_settings.model_copy(
        update={
            "api_port": free_port(),
            "api_max_body_bytes": BODY_LIMIT,
            "webhooks": False,
            "chunk_size": 1,
        }
    )


@pytest.fixture
def store(api_settings: Settings) -> Iterator[Any]:
    """The job store, for moving jobs as a worker would."""
    with Client(api_settings) as client:
        yield client.status_store


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


def lines(*objs: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def submit(http: httpx.Client, key: str, spec: dict[str, Any] | None = None, **params: str) -> dict:
    answer = http.post("/v1/jobs", json=spec or {"prompt": "x"}, params=params, headers=auth(key))
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


def job(http: httpx.Client, key: str, job_id: str) -> dict:
    answer = http.get(f"/v1/jobs/{job_id}", headers=auth(key))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def cancel(http: httpx.Client, key: str, job_id: str) -> None:
    answer = http.post(f"/v1/jobs/{job_id}/cancel", headers=auth(key))
    assert answer.status_code == 200 and answer.json() == {"canceled": 1}, answer.text


def usage(http: httpx.Client, key: str, **params: str) -> httpx.Response:
    return http.get("/v1/usage", params=params, headers=auth(key))


def run_to_success(store: Any, job_id: str, images: int) -> None:
    """Start a job and let it succeed with `images` outputs, as a worker does."""
    assert store.start(job_id, "sim", 2, {"prompt": "x"})[0]
    assert store.succeed(job_id, [f"file:///out/{job_id}/{k}.png" for k in range(images)], "{}")


def assert_problem(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    body = dict(answer.json())
    assert body["status"] == status
    return body


# -- queue position and ETA (first: the ETA needs no job to have left the queues yet) ------


def test_an_eta_is_null_until_jobs_leave_the_queues_then_grows_with_position(
    http: httpx.Client, make_key: Any
):
    key = make_key("eta")
    began = time.monotonic()
    ahead = [submit(http, key)["job_id"] for _ in range(2)]
    first, second = submit(http, key)["job_id"], submit(http, key)["job_id"]
    assert job(http, key, first)["queue"] == {"position": 2, "eta_s": None}  # none has left yet
    for job_id in ahead:  # the two jobs ahead of them leave the queue
        cancel(http, key, job_id)
    assert isinstance(wait_for(lambda: job(http, key, second)["queue"]["eta_s"], 30, "an ETA"), float)
    one, two = job(http, key, first)["queue"], job(http, key, second)["queue"]
    spent = time.monotonic() - began
    assert (one["position"], two["position"]) == (0, 1)
    # Two jobs left over at least 5 s of samples (at most 0.4 jobs/s): ETA = (position + 1) / rate.
    assert 2.5 <= one["eta_s"] <= spent / 2 + 0.05
    assert two["eta_s"] > one["eta_s"]


def test_queued_jobs_have_positions_in_submit_order_and_low_priority_waits_behind(
    http: httpx.Client, make_key: Any, store: Any
):
    key = make_key("positions")
    normal = [submit(http, key) for _ in range(3)]
    submitted = [j["queue"]["position"] for j in normal]
    assert submitted == list(range(submitted[0], submitted[0] + 3)) and submitted[0] >= 0
    low = submit(http, key, priority="low")
    normal.append(submit(http, key))  # submitted after the low-priority job, still ahead of it
    ids = [j["job_id"] for j in normal]
    positions = [job(http, key, job_id)["queue"]["position"] for job_id in ids]
    assert positions == list(range(submitted[0], submitted[0] + 4))
    seen_low = job(http, key, low["job_id"])
    assert seen_low["priority"] == "low" and seen_low["queue"]["position"] > max(positions)

    # A canceled job leaves the queue: it has no position, and the jobs behind it move up.
    cancel(http, key, ids[1])
    gone = job(http, key, ids[1])
    assert gone["state"] == "canceled" and gone["queue"] is None
    assert job(http, key, ids[2])["queue"]["position"] == positions[2] - 1
    # Running and finished jobs are not in the queue either.
    assert store.start(ids[0], "sim", 2, {"prompt": "x"})[0]
    running = job(http, key, ids[0])
    assert running["state"] == "running" and running["queue"] is None
    assert store.succeed(ids[0], ["file:///out/0.png"], "{}")
    finished = job(http, key, ids[0])
    assert finished["state"] == "succeeded" and finished["queue"] is None


# -- the cap on a tenant's unfinished jobs ---------------------------------------------------


def test_single_jobs_over_the_cap_get_429_until_jobs_finish_or_are_canceled(
    http: httpx.Client, make_key: Any, store: Any
):
    key = make_key("capped-jobs", max_queued=3)
    keyed = {**auth(key), "Idempotency-Key": "order-1"}
    first = http.post("/v1/jobs", json={"prompt": "x"}, headers=keyed).json()
    ids = [first["job_id"]] + [submit(http, key)["job_id"] for _ in range(2)]

    refused = http.post("/v1/jobs", json={"prompt": "one too many"}, headers=auth(key))
    problem = assert_problem(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1 and "3" in problem["detail"]
    assert usage(http, key).json()["tenants"]["capped-jobs"]["queued"] == 3
    # A replay of a job already recorded is not a new job: it answers the same job, at the cap.
    again = http.post("/v1/jobs", json={"prompt": "x"}, headers=keyed)
    assert again.status_code == 202 and again.json()["job_id"] == first["job_id"]

    # A running job still counts; once it finishes there is room for one more.
    assert store.start(ids[0], "sim", 2, {"prompt": "x"})[0]
    assert_problem(http.post("/v1/jobs", json={"prompt": "x"}, headers=auth(key)), 429)
    assert store.succeed(ids[0], ["file:///out/0.png"], "{}")
    ids.append(submit(http, key)["job_id"])
    assert_problem(http.post("/v1/jobs", json={"prompt": "x"}, headers=auth(key)), 429)

    # Canceling a queued job frees room too.
    cancel(http, key, ids[1])
    submit(http, key)
    assert_problem(http.post("/v1/jobs", json={"prompt": "x"}, headers=auth(key)), 429)
    counts = usage(http, key).json()["tenants"]["capped-jobs"]
    assert (counts["queued"], counts["running"], counts["succeeded"], counts["canceled"]) == (3, 0, 1, 1)


def test_a_batch_over_the_cap_queues_the_lines_before_it_and_a_resend_sends_the_rest(
    http: httpx.Client, make_key: Any
):
    key = make_key("capped-batch", max_queued=5)
    body = lines(*[{"prompt": f"line {n}"} for n in range(1, 9)])
    headers = {**auth(key), "Idempotency-Key": "upload-1"}

    refused = http.post("/v1/batches", content=body, headers=headers)
    problem = assert_problem(refused, 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert (problem["jobs"], problem["refused_from_line"]) == (5, 6)
    batch_id = problem["batch_id"]
    batch = http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
    assert batch["total"] == 5 and batch["counts"]["queued"] == 5 and batch["tenant"] == "capped-batch"
    listed = http.get(f"/v1/batches/{batch_id}/jobs", headers=auth(key)).json()["jobs"]
    assert [j["job_id"] for j in listed] == [f"{batch_id}-{i}" for i in range(5)]

    # Still at the cap: the same answer, and nothing is recorded twice.
    again = assert_problem(http.post("/v1/batches", content=body, headers=headers), 429)
    assert (again["batch_id"], again["jobs"], again["refused_from_line"]) == (batch_id, 5, 6)
    assert http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()["total"] == 5

    for index in range(3):
        cancel(http, key, f"{batch_id}-{index}")
    rest = http.post("/v1/batches", content=body, headers=headers)
    assert rest.status_code == 202, rest.text
    answer = rest.json()
    assert answer["batch_id"] == batch_id and answer["jobs"] == 8
    assert (answer["sent"], answer["skipped"]) == (3, 5)
    batch = http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
    assert batch["total"] == 8 and (batch["counts"]["queued"], batch["counts"]["canceled"]) == (5, 3)
    counts = usage(http, key).json()["tenants"]["capped-batch"]
    assert (counts["queued"], counts["canceled"]) == (5, 3)


# -- usage -------------------------------------------------------------------------------------


def test_usage_counts_a_tenants_jobs_by_state_and_its_images(http: httpx.Client, make_key: Any, store: Any):
    key, other, admin = make_key("usage-a"), make_key("usage-b"), make_key("usage-ops", admin=True)
    assert usage(http, key).json() == {"tenants": {"usage-a": ZERO_USAGE}}
    three = submit(http, key, {"prompt": "x", "num_images": 3})["job_id"]
    one = submit(http, key)["job_id"]
    batch = http.post(
        "/v1/batches", content=lines(*[{"prompt": "y", "num_images": 2}] * 2), headers=auth(key)
    )
    assert batch.status_code == 202, batch.text
    submit(http, other)
    expected = {**ZERO_USAGE, "queued": 4, "images_submitted": 8}
    assert usage(http, key).json() == {"tenants": {"usage-a": expected}}

    cancel(http, key, one)
    expected = {**expected, "queued": 3, "canceled": 1}
    assert usage(http, key).json()["tenants"]["usage-a"] == expected
    assert store.start(three, "sim", 2, {"prompt": "x"})[0]
    expected = {**expected, "queued": 2, "running": 1}
    assert usage(http, key).json()["tenants"]["usage-a"] == expected
    assert store.succeed(three, [f"file:///out/{k}.png" for k in range(3)], "{}")
    expected = {**expected, "running": 0, "succeeded": 1, "images_succeeded": 3}
    assert usage(http, key, tenant="usage-a").json() == {"tenants": {"usage-a": expected}}

    # Another tenant's usage is not found for a tenant's key; an admin key sees every tenant's.
    assert_problem(usage(http, key, tenant="usage-b"), 404)
    everyone = usage(http, admin).json()["tenants"]
    assert everyone["usage-a"] == expected and everyone["usage-b"]["queued"] == 1
    assert "usage-ops" not in everyone  # the admin's own tenant has submitted nothing
    only = usage(http, admin, tenant="usage-b").json()
    assert only == {"tenants": {"usage-b": {**ZERO_USAGE, "queued": 1, "images_submitted": 1}}}


# -- `{"source": URI}` batches ---------------------------------------------------------------


def storage_root(settings: Settings) -> Path:
    return Path(unquote(urlparse(settings.storage_url).path))


def from_source(http: httpx.Client, key: str, body: Any) -> httpx.Response:
    return http.post("/v1/batches", json=body, headers=auth(key))


def test_a_source_batch_reads_a_jsonl_object_in_the_tenants_own_folder(
    http: httpx.Client, make_key: Any, api_settings: Settings
):
    key, admin = make_key("src-a"), make_key("src-ops", admin=True)
    root = storage_root(api_settings)
    own = root / "sources" / "src-a" / "jobs.jsonl"
    own.parent.mkdir(parents=True)
    own.write_bytes(
        lines({"prompt": "first"}, {"prompt": "x", "height": 65}) + b"{broken\n" + lines({"prompt": "last"})
    )

    answer = from_source(http, key, {"source": own.as_uri()})
    assert answer.status_code == 202, answer.text
    result = answer.json()
    assert result["jobs"] == 2 and [e["line"] for e in result["errors"]] == [2, 3]
    batch = http.get(f"/v1/batches/{result['batch_id']}", headers=auth(key)).json()
    assert batch["total"] == 2 and batch["tenant"] == "src-a"

    # An admin key may read anywhere in the storage.
    elsewhere = root / "shared" / "admin.jsonl"
    elsewhere.parent.mkdir(parents=True)
    elsewhere.write_bytes(lines({"prompt": "one"}, {"prompt": "two"}, {"prompt": "three"}))
    by_admin = from_source(http, admin, {"source": elsewhere.as_uri()})
    assert by_admin.status_code == 202 and by_admin.json()["jobs"] == 3, by_admin.text


def test_a_source_outside_the_tenants_folder_or_malformed_is_refused(
    http: httpx.Client, make_key: Any, api_settings: Settings
):
    key, prefix_tenant = make_key("src-b"), make_key("src")
    root = storage_root(api_settings)
    theirs = root / "sources" / "src-c" / "jobs.jsonl"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(lines({"prompt": "not yours"}))
    mine = root / "sources" / "src-b"
    mine.mkdir(parents=True)
    (mine / "to-theirs.jsonl").symlink_to(theirs)
    (mine / "to-host.jsonl").symlink_to("/etc/hostname")
    outside = [
        theirs.as_uri(),
        f"{mine.as_uri()}/../src-c/jobs.jsonl",
        f"{mine.as_uri()}/%2e%2e/src-c/jobs.jsonl",
        (mine / "to-theirs.jsonl").as_uri(),
        (mine / "to-host.jsonl").as_uri(),
        "file:///etc/passwd",
        (root / "shared-by-nobody.jsonl").as_uri(),
        "s3://bucket/sources/src-b/jobs.jsonl",
        "https://example.com/sources/src-b/jobs.jsonl",
        "sources/src-b/jobs.jsonl",
    ]
    for uri in outside:
        problem = assert_problem(from_source(http, key, {"source": uri}), 422)
        assert problem["fields"] == ["source"], (uri, problem)
    # A tenant whose name begins another's reads only its own folder.
    problem = assert_problem(from_source(http, prefix_tenant, {"source": theirs.as_uri()}), 422)
    assert problem["fields"] == ["source"]

    (mine / "folder").mkdir()
    (mine / "file.jsonl").write_bytes(lines({"prompt": "x"}))
    for absent in ["missing.jsonl", "folder", "file.jsonl/below"]:
        assert_problem(from_source(http, key, {"source": (mine / absent).as_uri()}), 404)
    for body in [{"source": 5}, {"source": (mine / "x.jsonl").as_uri(), "priority": "low"}, {}, ["source"]]:
        problem = assert_problem(from_source(http, key, body), 422)
        assert problem["fields"] == ["source"], (body, problem)
    headers = {**auth(key), "Content-Type": "application/json"}
    not_json = assert_problem(http.post("/v1/batches", content=b'{"source": ', headers=headers), 422)
    assert not_json["fields"] == ["body"]
    huge = json.dumps({"source": "file:///" + "a" * (BODY_LIMIT + 10)})
    assert_problem(http.post("/v1/batches", content=huge, headers=headers), 413)
    assert http.get("/healthz").status_code == 200
    assert usage(http, key).json()["tenants"]["src-b"]["queued"] == 0  # nothing was submitted


# -- the cap on request bodies ---------------------------------------------------------------


def test_a_body_over_the_limit_gets_413_with_or_without_a_content_length(http: httpx.Client, make_key: Any):
    key = make_key("big-bodies")
    big = json.dumps({"prompt": "x" * (BODY_LIMIT + 100)}).encode()
    headers = {**auth(key), "Content-Type": "application/json"}

    declared = http.post("/v1/jobs", content=big, headers=headers)
    assert_problem(declared, 413)

    def pieces() -> Iterator[bytes]:  # no Content-Length: sent chunked
        for at in range(0, len(big), 8192):
            yield big[at : at + 8192]

    chunked = http.post("/v1/jobs", content=pieces(), headers=headers)
    assert "content-length" not in chunked.request.headers
    assert_problem(chunked, 413)

    # A body under the limit is read and judged on its merits; the server goes on answering.
    long_prompt = http.post("/v1/jobs", json={"prompt": "x" * 10_000}, headers=auth(key))
    assert_problem(long_prompt, 422)
    assert http.get("/healthz").status_code == 200
    submit(http, key)


def test_a_batch_upload_is_not_held_to_the_body_limit(http: httpx.Client, make_key: Any):
    key = make_key("big-upload")
    body = lines(*[{"prompt": f"{n} " + "y" * 1900} for n in range(40)])
    assert len(body) > BODY_LIMIT
    answer = http.post("/v1/batches", content=body, headers=auth(key))
    assert answer.status_code == 202, answer.text
    assert answer.json()["jobs"] == 40 and answer.json()["errors"] == []
