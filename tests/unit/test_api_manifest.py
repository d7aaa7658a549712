"""A batch's manifest over the API on S3 storage: a presigned URL, as its images get (file storage
is served by the route itself: tests/integration/test_api_batches.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from kandinsky_batch.errors import NotFound
from kandinsky_batch.schema import BatchStatus, JobState
from kandinsky_batch.store.apikeys import ApiKey
from producer.api.routes.batches import get_manifest, manifest_url

MANIFEST = "s3://bucket/run/b1/manifest.jsonl"
PRESIGNED = "https://s3.example.com/bucket/run/b1/manifest.jsonl?X-Amz-Signature=x"


def s3_client(manifest: str | None) -> Any:
    batch = BatchStatus(
        batch_id="b1", total=1, counts={JobState.SUCCEEDED: 1}, manifest=manifest, tenant="acme"
    )
    status_store = SimpleNamespace(batch=lambda batch_id: batch)
    return SimpleNamespace(
        status_store=status_store, url_for=lambda uri: PRESIGNED if uri == MANIFEST else uri
    )


def test_an_s3_manifest_is_a_presigned_url_and_its_route_redirects_there():
    client = s3_client(MANIFEST)
    assert manifest_url(None, client, "b1", MANIFEST) == PRESIGNED  # type: ignore[arg-type]
    answer = get_manifest("b1", ApiKey("k1", "acme"), client)
    assert answer.status_code == 307 and answer.headers["location"] == PRESIGNED


def test_the_manifest_route_is_404_for_another_tenant_and_before_the_batch_is_done():
    with pytest.raises(NotFound):
        get_manifest("b1", ApiKey("k2", "globex"), s3_client(MANIFEST))
    with pytest.raises(NotFound, match="no manifest yet"):
        get_manifest("b1", ApiKey("k1", "acme"), s3_client(None))
