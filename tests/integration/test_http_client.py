"""`HttpClient`, the SDK over HTTP, against a real uvicorn, Redis and worker: the same calls as
`Client` (producer/sdk.py: submit, submit_batch, status, batch, jobs, statuses, wait, results,
iter_results, download, cancel, retry_failed) with only a URL and a key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kandinsky_batch.errors import InvalidSpec, NotFound
from kandinsky_batch.schema import BatchStatus, JobState, JobStatus
from kandinsky_batch.settings import Settings
from producer.client import Client
from producer.http_client import HttpClient

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
PNG = b"\x89PNG\r\n\x1a\n"


def test_a_service_with_a_url_and_a_key_submits_waits_and_downloads(
    server: str, acme_key: str, tmp_path: Path
):
    with HttpClient(server, acme_key) as client:
        job = client.submit({"prompt": "over http", **TINY}, idempotency_key="http-1")
        assert client.submit({"prompt": "over http", **TINY}, idempotency_key="http-1") == job
        final = client.wait(job, timeout=120)
        assert isinstance(final, JobStatus) and final.state is JobState.SUCCEEDED
        [result] = client.results(job, download_to=tmp_path)
        assert Path(result.files[0]).read_bytes().startswith(PNG)


def test_a_batch_file_over_http_reports_bad_lines_and_finishes(server: str, acme_key: str, tmp_path: Path):
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"prompt": "one"}\n{"prompt": "x", "height": 65}\n{"prompt": "two"}\n')
    with HttpClient(server, acme_key) as client:
        result = client.submit_batch(path, defaults=TINY)
        assert [e.line for e in result.errors] == [2] and len(result.indices) == 2
        final = client.wait(result.batch_id, timeout=120)
        assert isinstance(final, BatchStatus) and final.counts[JobState.SUCCEEDED] == 2
        assert client.retry_failed(result.batch_id).retried == []
        assert client.cancel(result.batch_id) == 0


def test_errors_come_back_as_the_sdks_own(server: str, acme_key: str, keys: dict[str, str]):
    with HttpClient(server, acme_key) as client:
        with pytest.raises(InvalidSpec, match="height"):
            client.submit({"prompt": "x", "height": 65})
        job = client.submit({"prompt": "mine", **TINY})
    with HttpClient(server, keys["globex"]) as other, pytest.raises(NotFound):
        other.status(job)


def test_a_batch_is_read_job_by_job_over_http_as_on_redis(
    server: str, acme_key: str, api_settings: Settings, tmp_path: Path
):
    specs = [{"prompt": "page one", **TINY, "num_images": 2}, {"prompt": "page two", **TINY}]
    with HttpClient(server, acme_key) as client:
        batch = client.submit_batch(specs).batch_id
        client.wait(batch, timeout=120)
        assert isinstance(client.batch(batch), BatchStatus) and client.batch(batch).total == 2
        jobs = list(client.jobs(batch))
        assert [j.job_id for j in client.statuses(batch)] == [j.job_id for j in jobs]
        [one] = client.statuses(jobs[1].job_id)
        assert one.job_id == jobs[1].job_id and one.state is JobState.SUCCEEDED

        results = client.iter_results(batch, download_to=tmp_path / "results")
        assert isinstance(results, Iterator)  # one job at a time
        for result in results:
            assert result.files == [
                str(tmp_path / "results" / result.job_id / f"{k}.png") for k in range(len(result.urls))
            ]
            assert all(Path(f).read_bytes().startswith(PNG) for f in result.files)
        # A page's job (outputs as storage URIs) and a job read alone (outputs as URLs) download alike
        paged = client.download(jobs[0], tmp_path / "paged")
        alone = client.download(client._job(jobs[0].job_id), tmp_path / "alone")
    with Client(api_settings) as redis:
        on_redis = list(redis.jobs(batch))
        copied = redis.download(on_redis[0], tmp_path / "redis")
    # The same jobs as on Redis, less what the API's pages leave out (spec, metadata)
    assert [(j.job_id, j.state, j.seed, j.outputs) for j in jobs] == [
        (j.job_id, j.state, j.seed, j.outputs) for j in on_redis
    ]
    assert all(j.spec is None for j in jobs) and len(jobs[0].outputs) == 2
    assert [p.relative_to(tmp_path / "paged") for p in paged] == [
        p.relative_to(tmp_path / "redis") for p in copied
    ]
    assert (
        [p.read_bytes() for p in paged] == [p.read_bytes() for p in alone] == [p.read_bytes() for p in copied]
    )


def test_a_file_sent_again_over_http_is_the_same_batch_and_sends_nothing_twice(
    server: str, acme_key: str, tmp_path: Path
):
    path = tmp_path / "again.jsonl"
    path.write_text('{"prompt": "again one"}\n{"prompt": "again two"}\n')
    with HttpClient(server, acme_key) as client:
        first = client.submit_batch(path, defaults=TINY)
        again = client.submit_batch(path, defaults=TINY)
        other = client.submit_batch(path, defaults={**TINY, "seed": 7})  # other defaults: another batch
    assert (first.sent, again.batch_id, again.sent, again.skipped) == (2, first.batch_id, 0, 2)
    assert other.batch_id != first.batch_id and other.sent == 2
