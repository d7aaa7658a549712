"""Hostile tenants over a real uvicorn and Redis (no worker: jobs stay where a test puts them).

A tenant's job inputs may name only `data:` URIs, https URLs and its own `sources/<tenant>/`
objects; keyed batch ids cannot be worked out without the server's secret; every path that
queues jobs is held to the tenant's cap; an upload of millions of bad lines costs a count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import httpx
import pytest

from kandinsky_batch.settings import Settings
from producer.api.keyed_ids import keyed_batch_id
from producer.client import Client
from tests.helpers.corpus import TINY
from tests.helpers.images import image_bytes, png_url
from tests.integration.conftest import auth, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker() -> Iterator[None]:
    """No worker: every job stays queued until a test moves it."""
    yield None


@pytest.fixture(scope="module")
def api_settings(module_settings: Settings) -> Settings:
    return module_settings.model_copy(update={"api_port": free_port(), "webhooks": False, "chunk_size": 1})


@pytest.fixture
def sdk(api_settings: Settings) -> Iterator[Client]:
    with Client(api_settings) as client:
        yield client


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=60) as client:
        yield client


def root_of(settings: Settings) -> Path:
    return Path(unquote(urlparse(settings.storage_url).path))


def problem_of(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    return dict(answer.json())


def img2img(image: str) -> dict[str, Any]:
    return {**TINY, "mode": "img2img", "prompt": "a fox", "image": image}


def their_output(settings: Settings, tenant: str = "victim") -> Path:
    """Where a stored output of another tenant lies (made here: nothing needs to have run)."""
    path = root_of(settings) / "h0123456789abcdef012" / "h0123456789abcdef012-0" / "0.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes((64, 64)))
    return path


def foreign_uris(settings: Settings, tenant: str) -> list[str]:
    """Every spelling of another tenant's output (or of anything not the tenant's own sources)."""
    root = root_of(settings)
    theirs = their_output(settings)
    mine = root / "sources" / tenant
    mine.mkdir(parents=True, exist_ok=True)
    link = mine / "link.png"
    if not link.is_symlink():
        link.symlink_to(theirs)
    other_sources = root / "sources" / f"{tenant}x" / "a.png"
    other_sources.parent.mkdir(parents=True, exist_ok=True)
    other_sources.write_bytes(image_bytes((64, 64)))
    return [
        theirs.as_uri(),
        f"file://localhost{theirs}",
        f"FILE://{theirs}",
        f"file://{quote(str(theirs), safe='')}",
        f"{mine.as_uri()}/../../{theirs.relative_to(root)}",
        f"{mine.as_uri()}/%2e%2e/%2e%2e/{theirs.relative_to(root)}",
        link.as_uri(),
        other_sources.as_uri(),
        f"s3://bucket/run/{theirs.relative_to(root)}",
        f"s3://bucket/sources/{tenant}/a.png",
        "file:///etc/hostname",
        str(theirs),
        str(theirs.relative_to(root)),
        "http://example.com/a.png",
        "ftp://example.com/a.png",
    ]


def test_job_inputs_naming_another_tenants_objects_are_refused_at_submit(
    http: httpx.Client, make_key: Any, api_settings: Settings
):
    key = make_key("thief")
    for uri in foreign_uris(api_settings, "thief"):
        problem = problem_of(http.post("/v1/jobs", json=img2img(uri), headers=auth(key)), 422)
        assert problem["fields"] == ["image"], (uri, problem)
        assert "sources/thief/" in problem["detail"]
    theirs = their_output(api_settings).as_uri()
    inpaint = {**TINY, "mode": "inpaint", "prompt": "x", "image": png_url(), "mask": theirs}
    assert problem_of(http.post("/v1/jobs", json=inpaint, headers=auth(key)), 422)["fields"] == ["mask"]
    conditions = [{"text": "a", "weight": 1}, {"image": theirs, "weight": 1}]
    interpolate = {**TINY, "mode": "interpolate", "conditions": conditions}
    problem = problem_of(http.post("/v1/jobs", json=interpolate, headers=auth(key)), 422)
    assert problem["fields"] == ["conditions.1.image"]


def test_an_upload_refuses_the_lines_naming_another_tenants_objects_and_sends_the_rest(
    http: httpx.Client, make_key: Any, api_settings: Settings
):
    key = make_key("thief-batch")
    theirs = their_output(api_settings).as_uri()
    body = "\n".join(json.dumps(s) for s in [img2img(theirs), img2img(png_url()), {**TINY, "prompt": "x"}])
    answer = http.post("/v1/batches", content=body.encode(), headers=auth(key))
    assert answer.status_code == 202, answer.text
    result = answer.json()
    assert result["jobs"] == 2 and [e["line"] for e in result["errors"]] == [1]
    assert result["errors"][0]["reason"].startswith("image: ")


def test_a_tenants_own_sources_are_accepted_and_an_admin_key_gets_no_wider_reach(
    http: httpx.Client, make_key: Any, api_settings: Settings
):
    mine = root_of(api_settings) / "sources" / "owner" / "in.png"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_bytes(image_bytes((64, 64)))
    owner = make_key("owner")
    assert http.post("/v1/jobs", json=img2img(mine.as_uri()), headers=auth(owner)).status_code == 202
    for other in (make_key("not-owner"), make_key("ops-admin", admin=True)):
        problem = problem_of(http.post("/v1/jobs", json=img2img(mine.as_uri()), headers=auth(other)), 422)
        assert problem["fields"] == ["image"]


def test_a_refusal_reads_the_same_whether_or_not_the_object_exists(
    http: httpx.Client, make_key: Any, api_settings: Settings
):
    key = make_key("prober")
    there = their_output(api_settings)
    missing = there.with_name("7.png")
    answers = [
        problem_of(http.post("/v1/jobs", json=img2img(p.as_uri()), headers=auth(key)), 422)["detail"]
        for p in (there, missing)
    ]
    assert answers[0] == answers[1]
    assert str(there) not in answers[0]


@pytest.mark.parametrize(
    "uri",
    [
        "file:///tmp/a\x00b.png",
        "file:///tmp/a\nb.png",
        "https://example.com/a\rb.png",
        "data:\x7f",
        "a\u2028b",
    ],
)
def test_control_characters_in_an_input_uri_are_refused_at_submit(
    http: httpx.Client, make_key: Any, uri: str
):
    key = make_key("ctl")
    problem = problem_of(http.post("/v1/jobs", json=img2img(uri), headers=auth(key)), 422)
    assert problem["fields"] == ["image"] and "control characters" in problem["detail"]


@pytest.mark.parametrize(
    "rect",
    [[0, 0, 10**20, 5], [-1, 0, 5, 5], [0, 0, 65536, 5], [5, 5, 5, 9], [2**63, 0, 2**63 + 1, 1]],
)
def test_rectangles_past_any_image_are_refused_at_submit(http: httpx.Client, make_key: Any, rect: list[int]):
    key = make_key("rects")
    spec = {**TINY, "mode": "inpaint", "prompt": "x", "image": png_url(), "mask": [rect]}
    problem = problem_of(http.post("/v1/jobs", json=spec, headers=auth(key)), 422)
    assert problem["fields"][0].startswith("mask"), problem


def test_a_nul_byte_in_a_source_uri_is_a_422(http: httpx.Client, make_key: Any, api_settings: Settings):
    key = make_key("src-nul")
    uri = (root_of(api_settings) / "sources" / "src-nul" / "a\x00.jsonl").as_uri()
    problem = problem_of(http.post("/v1/batches", json={"source": uri}, headers=auth(key)), 422)
    assert problem["fields"] == ["source"]
    assert http.get("/healthz").status_code == 200


def test_keyed_batch_ids_are_derived_with_the_servers_secret(
    http: httpx.Client, make_key: Any, sdk: Client, api_settings: Settings
):
    acme, globex = make_key("keyed-a"), make_key("keyed-b")
    headers = {"Idempotency-Key": "order-42"}
    first = http.post("/v1/jobs", json={**TINY, "prompt": "x"}, headers={**auth(acme), **headers}).json()
    again = http.post("/v1/jobs", json={**TINY, "prompt": "x"}, headers={**auth(acme), **headers}).json()
    other = http.post("/v1/jobs", json={**TINY, "prompt": "x"}, headers={**auth(globex), **headers}).json()
    assert first["batch_id"] == again["batch_id"] != other["batch_id"]
    # Not the plain hash anyone could compute; the HMAC under the secret only Redis holds.
    import hashlib

    guessable = "h" + hashlib.sha256(b"keyed-a\0order-42").hexdigest()[:19]
    assert first["batch_id"] != guessable
    secret = sdk.redis.get(sdk.status_store.keys.batch_id_secret())
    assert isinstance(secret, bytes) and len(secret) >= 32
    assert first["batch_id"] == keyed_batch_id(secret, "keyed-a", "order-42")
    upload = http.post(
        "/v1/batches",
        content=b'{"prompt": "x", "height": 64, "width": 64}\n',
        headers={**auth(acme), **headers},
    ).json()
    assert upload["batch_id"] == first["batch_id"]


def test_retry_failed_is_held_to_the_tenants_cap(http: httpx.Client, make_key: Any, sdk: Client):
    key = make_key("capped-retry", max_queued=3)
    body = "\n".join(json.dumps({**TINY, "prompt": f"p{i}"}) for i in range(3)).encode()
    batch = http.post("/v1/batches", content=body, headers=auth(key)).json()["batch_id"]
    store = sdk.status_store
    for i in range(3):  # as a worker would fail them
        assert store.start(f"{batch}-{i}", "sim", 2, {**TINY, "prompt": f"p{i}"})[0]
        assert store.fail(f"{batch}-{i}", "bad_input", "broken")
    for _ in range(2):
        assert http.post("/v1/jobs", json={**TINY, "prompt": "x"}, headers=auth(key)).status_code == 202
    # Room for one more: one failed job goes again, the others stay failed, and the answer is 429.
    answer = http.post(f"/v1/batches/{batch}/retry-failed", headers=auth(key))
    problem = problem_of(answer, 429)
    assert len(problem["retried"]) == 1 and "3" in problem["detail"]
    usage = http.get("/v1/usage", headers=auth(key)).json()["tenants"]["capped-retry"]
    assert (usage["queued"], usage["failed"]) == (3, 2)
    # Nothing else queues past the cap either.
    assert http.post("/v1/jobs", json={**TINY, "prompt": "x"}, headers=auth(key)).status_code == 429


def api_pid(port: int) -> int:
    """The API server process serving `port` (started by the `server` fixture)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"producer.cli" in cmdline and f"KANDINSKY_BATCH_API_PORT={port}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no API process on port {port}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_an_upload_of_a_million_bad_lines_answers_100_errors_and_a_count_in_bounded_memory(
    http: httpx.Client, make_key: Any, api_settings: Settings
):
    key = make_key("noisy")
    pid = api_pid(api_settings.api_port)
    before = rss_mb(pid)
    lines = 1_000_000
    answer = http.post("/v1/batches", content=b"x\n" * lines, headers=auth(key))
    assert answer.status_code == 422, answer.text[:500]  # no valid line: no batch
    result = answer.json()
    assert result["detail"] == "no line of the body is a valid job" and result["error_count"] == lines
    assert [e["line"] for e in result["errors"]] == list(range(1, 101))
    assert len(answer.content) < 64 * 1024
    grown = rss_mb(pid) - before
    print(f"API RSS: {before:.1f} MB before, +{grown:.1f} MB after {lines} bad lines")
    assert grown < 64, f"the API grew by {grown:.0f} MB"
    assert os.path.exists(f"/proc/{pid}")  # the same process: nothing restarted it
