"""`/v1/batches` over a real uvicorn, Redis and worker: a streamed JSONL upload with bad lines,
counts with rate and ETA, paging 10k jobs by cursor, cancel, retry-failed, and tenant isolation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from kandinsky_batch.keys import JobRef
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from producer.client import Client
from tests.integration.conftest import auth

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


def lines(*objs: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def wait_batch(http: httpx.Client, batch_id: str, key: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        batch = http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
        if batch["done"]:
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)


def test_a_streamed_upload_reports_bad_lines_and_runs_the_rest(server: str, acme_key: str):
    body = (
        lines({"prompt": "first"}, {"prompt": "x", "height": 65}) + b"{broken\n" + lines({"prompt": "last"})
    )

    def chunks() -> Iterator[bytes]:  # sent in small pieces, as a streamed upload arrives
        for at in range(0, len(body), 7):
            yield body[at : at + 7]

    with httpx.Client(base_url=server, timeout=60) as http:
        answer = http.post(
            f"/v1/batches?defaults={json.dumps(TINY)}", content=chunks(), headers=auth(acme_key)
        )
        assert answer.status_code == 202, answer.text
        result = answer.json()
        assert result["jobs"] == 2 and [e["line"] for e in result["errors"]] == [2, 3]
        assert "height" in result["errors"][0]["reason"] and "malformed JSON" in result["errors"][1]["reason"]
        batch = wait_batch(http, result["batch_id"], acme_key)
        assert batch["counts"]["succeeded"] == 2 and batch["total"] == 2 and batch["eta_s"] == 0.0
        assert batch["jobs_per_s"] and batch["manifest_url"]
        assert http.get(f"/v1/batches/{result['batch_id']}", headers=auth("kb_nobody")).status_code == 401


def test_a_batchs_manifest_is_served_by_the_api_to_its_tenant_only(
    server: str, acme_key: str, keys: dict[str, str]
):
    with httpx.Client(base_url=server, timeout=60) as http:
        body = lines(*[{"prompt": f"listed {i}", **TINY} for i in range(2)])
        batch_id = http.post("/v1/batches", content=body, headers=auth(acme_key)).json()["batch_id"]
        route = f"/v1/batches/{batch_id}/manifest"
        wait_batch(http, batch_id, acme_key)
        # The manifest is written just after the last job finishes
        deadline = time.monotonic() + 30
        while not (url := http.get(f"/v1/batches/{batch_id}", headers=auth(acme_key)).json()["manifest_url"]):
            assert time.monotonic() < deadline, "no manifest_url"
            time.sleep(0.2)
        assert url == f"{server}{route}"  # an URL of the API, not a path on its machine
        got = http.get(url, headers=auth(acme_key))
        assert got.status_code == 200 and got.headers["content-type"].startswith("application/x-ndjson")
        states = [(r["job_id"], r["state"]) for r in map(json.loads, got.text.splitlines())]
        assert states == [(f"{batch_id}-{i}", "succeeded") for i in range(2)]
        assert http.get(url, headers=auth(keys["globex"])).status_code == 404
        assert http.get(url, headers=auth(keys["admin"])).status_code == 200
        assert http.get(url).status_code == 401


def test_paging_ten_thousand_jobs_by_cursor_sees_each_once(
    server: str, acme_key: str, api_settings: Settings
):
    # Given a 10k-job batch of this tenant, canceled at once so the module's worker skips it
    body = lines(*[{"prompt": f"p{i}", **TINY} for i in range(10_000)])
    with httpx.Client(base_url=server, timeout=120) as http, Client(api_settings) as client:
        answer = http.post("/v1/batches?priority=low", content=body, headers=auth(acme_key)).json()
        assert answer["jobs"] == 10_000
        client.cancel(answer["batch_id"])
        seen: list[str] = []
        cursor: int | None = 0
        pages = 0
        while cursor is not None:
            page = http.get(
                f"/v1/batches/{answer['batch_id']}/jobs", params={"cursor": cursor, "limit": 1000},
                headers=auth(acme_key),
            ).json()  # fmt: skip
            seen += [job["job_id"] for job in page["jobs"]]
            cursor, pages = page["next_cursor"], pages + 1
        assert len(seen) == len(set(seen)) == 10_000 and pages <= 11
        assert [JobRef.parse(j).index for j in seen[:3]] == [0, 1, 2]  # type: ignore[union-attr]
        only = http.get(f"/v1/batches/{answer['batch_id']}/jobs", params={"state": "succeeded"},
                        headers=auth(acme_key)).json()  # fmt: skip
        assert only["jobs"] == [] and only["next_cursor"] is not None  # a rare state: bounded pages


def test_cancel_and_retry_failed_of_a_batch(server: str, acme_key: str, keys: dict[str, str]):
    with httpx.Client(base_url=server, timeout=60) as http:
        # Accepted at submit (inline), failed by the worker: not an image.
        bad_image = {"prompt": "x", "mode": "img2img", "image": "data:image/png;base64,aGVsbG8=", **TINY}
        result = http.post("/v1/batches", content=lines(bad_image), headers=auth(acme_key)).json()
        batch = wait_batch(http, result["batch_id"], acme_key)
        assert batch["counts"]["failed"] == 1
        other = http.post(f"/v1/batches/{result['batch_id']}/retry-failed", headers=auth(keys["globex"]))
        assert other.status_code == 404
        retried = http.post(f"/v1/batches/{result['batch_id']}/retry-failed", headers=auth(acme_key)).json()
        assert retried == {"retried": [f"{result['batch_id']}-0"], "not_retried": []}
        canceled = http.post(f"/v1/batches/{result['batch_id']}/cancel", headers=auth(acme_key))
        assert canceled.status_code == 200 and canceled.json()["canceled"] in (0, 1)


def test_an_empty_upload_and_bad_defaults_are_problems(server: str, acme_key: str):
    with httpx.Client(base_url=server, timeout=30) as http:
        empty = http.post("/v1/batches", content=b"\n\n", headers=auth(acme_key))
        assert empty.status_code == 422 and empty.headers["content-type"] == "application/problem+json"
        bad = http.post("/v1/batches?defaults=[1]", content=lines({"prompt": "x"}), headers=auth(acme_key))
        assert bad.status_code == 422 and bad.json()["fields"] == ["defaults"]
        assert http.get("/healthz").status_code == 200


def test_events_stream_each_jobs_changes_until_the_batch_is_done(server: str, acme_key: str):
    with httpx.Client(base_url=server, timeout=120) as http:
        body = lines(*[{"prompt": f"watched {i}", **TINY} for i in range(2)])
        batch_id = http.post("/v1/batches", content=body, headers=auth(acme_key)).json()["batch_id"]
        events: list[tuple[str, dict]] = []
        with http.stream("GET", f"/v1/batches/{batch_id}/events", headers=auth(acme_key)) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((event, json.loads(line.removeprefix("data: "))))
    assert events[0][0] == "batch" and events[-1][0] == "done"
    assert events[-1][1]["counts"]["succeeded"] == 2
    finished = {data["job_id"] for kind, data in events if kind == "job" and data["state"] == "succeeded"}
    started_before = events[0][1]["counts"]["succeeded"]
    assert len(finished) == 2 - started_before  # every job that finished while watching was seen


def test_a_key_over_its_rate_gets_429_with_retry_after(server: str, api_settings: Settings):
    with Client(api_settings) as client:
        _, slow = ApiKeys(client.redis, client.status_store.keys).create("slowpoke", rate_per_s=2)
    with httpx.Client(base_url=server, timeout=30) as http:
        answers = [http.get("/v1/batches/none", headers=auth(slow)) for _ in range(6)]
    codes = [a.status_code for a in answers]
    assert codes[:2] == [404, 404] and 429 in codes, codes
    limited = next(a for a in answers if a.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["content-type"] == "application/problem+json"
