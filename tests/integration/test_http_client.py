"""`HttpClient`, the SDK over HTTP, against a real uvicorn, Redis and worker: the same calls as
`Client` (submit, submit_batch, status, wait, results, cancel, retry_failed) with only a URL and a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from kandinsky_batch.errors import InvalidSpec, NotFound
from kandinsky_batch.schema import BatchStatus, JobState, JobStatus
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
