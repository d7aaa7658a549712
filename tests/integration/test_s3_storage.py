"""S3Storage against a real S3 endpoint (moto's server over HTTP), and the Storage contract on both backends."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from botocore.stub import Stubber

from kandinsky_batch.errors import StorageUnavailable
from kandinsky_batch.keys import Keys, job_id
from kandinsky_batch.manifest import (
    MANIFEST_CONTENT_TYPE,
    SPOOL_MAX_BYTES,
    encode_line,
    manifest_lines,
    write_manifest,
)
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage, image_key, manifest_key, metadata_key, open_storage
from kandinsky_batch.storage.file import FileStorage
from kandinsky_batch.storage.s3 import MULTIPART_BYTES, S3Storage, make_client, parse_storage_url
from kandinsky_batch.store.status import StatusStore
from tests.helpers.s3server import S3Server, client, create_bucket, enforced_auth, running_s3_server

pytestmark = pytest.mark.integration

PREFIX = "out"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
# Past the manifest's spool limit (so it lies on disk) and two S3 parts and a bit (so it goes multipart).
BIG = random.Random(7).randbytes(2 * MULTIPART_BYTES + 12345)
assert len(BIG) > SPOOL_MAX_BYTES


def digest(data: bytes) -> str:
    """Compare big bodies by hash: a failed `==` on 16 MB would print them whole."""
    return hashlib.sha256(data).hexdigest()


@contextmanager
def spooled(data: bytes) -> Iterator[Any]:
    """`data` in a rewound SpooledTemporaryFile of the manifest's size limit, as write_manifest hands over."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_BYTES, mode="w+b") as fh:
        fh.write(data)
        fh.seek(0)
        yield fh


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with running_s3_server() as url:
        yield url


@pytest.fixture
def bucket(endpoint: str) -> str:
    return create_bucket(endpoint)


def s3_settings(endpoint: str, bucket: str, prefix: str = PREFIX, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "storage_url": f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}",
        "s3_endpoint_url": endpoint,
        "s3_access_key_id": "test",
        "s3_secret_access_key": "test",
        "s3_region": "us-east-1",
        "s3_addressing_style": "path",
        "s3_max_attempts": 2,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Backend:
    """A store, a way to read an object at its documented physical place, and URIs it does not own."""

    store: Storage
    read_raw: Callable[[str], bytes]
    foreign_uris: list[str]


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        root = tmp_path / "store"
        return Backend(
            FileStorage(root),
            lambda key: (root / key).read_bytes(),
            ["s3://bucket/out/a/b.png", (tmp_path / "elsewhere" / "a.png").as_uri(), "https://x.test/a.png"],
        )
    url = request.getfixturevalue("endpoint")
    name = create_bucket(url)
    raw = client(url)
    return Backend(
        S3Storage.from_settings(s3_settings(url, name)),
        lambda key: bytes(raw.get_object(Bucket=name, Key=f"{PREFIX}/{key}")["Body"].read()),
        [
            f"s3://other-{name}/{PREFIX}/a.png",
            f"s3://{name}/other/a.png",
            f"s3://{name}/{PREFIX}x/a.png",
            "file:///tmp/out/a.png",
            f"https://{name}.s3.amazonaws.com/{PREFIX}/a.png",
        ],
    )


# --- the Storage contract, on FileStorage and S3Storage -------------------------------------------


def test_put_returns_the_uri_and_get_returns_the_bytes(backend: Backend) -> None:
    uri = backend.store.put("b1/j1/0.png", PNG, "image/png")

    assert uri == backend.store.uri("b1/j1/0.png")
    assert backend.store.get("b1/j1/0.png") == PNG


def test_image_and_metadata_keys_land_at_the_documented_places(backend: Backend) -> None:
    backend.store.put(image_key("batch-1", "job-7", 2, "webp"), b"image", "image/webp")
    backend.store.put(metadata_key("batch-1", "job-7"), b"{}", "application/json")

    assert backend.read_raw("batch-1/job-7/2.webp") == b"image"
    assert backend.read_raw("batch-1/job-7.json") == b"{}"


def test_key_for_inverts_uri_and_refuses_uris_from_elsewhere(backend: Backend) -> None:
    key = image_key("b", "j", 0, "png")

    assert backend.store.key_for(backend.store.uri(key)) == key
    assert [backend.store.key_for(uri) for uri in backend.foreign_uris] == [None] * len(backend.foreign_uris)


def test_local_path_names_the_file_of_a_key_only_where_storage_is_a_local_folder(backend: Backend) -> None:
    key = image_key("b", "j", 0, "png")
    backend.store.put(key, PNG, "image/png")

    path = backend.store.local_path(key)
    if isinstance(backend.store, FileStorage):
        assert path is not None and path.read_bytes() == PNG
        assert path.as_uri() == backend.store.uri(key)
        assert backend.store.local_path("") == backend.store.root.resolve()
    else:
        assert path is None and backend.store.local_path("") is None


def test_get_of_a_missing_key_raises_key_error(backend: Backend) -> None:
    with pytest.raises(KeyError):
        backend.store.get("no-such-batch/job.json")


def test_a_rerun_overwrites_the_same_key(backend: Backend) -> None:
    backend.store.put("b/j/0.png", b"first", "image/png")
    backend.store.put("b/j/0.png", b"second", "image/png")

    assert backend.store.get("b/j/0.png") == b"second"


def test_keys_that_leave_the_root_are_refused(backend: Backend) -> None:
    with pytest.raises(ValueError):
        backend.store.put("../escape.png", b"x", "image/png")


def test_check_passes_on_a_writable_store(backend: Backend) -> None:
    backend.store.check()


def test_put_file_stores_the_rest_of_the_file_and_returns_the_uri(backend: Backend) -> None:
    source = io.BytesIO(b"skipped" + PNG)
    source.seek(len(b"skipped"))

    uri = backend.store.put_file("b1/j1/0.png", source, "image/png")

    assert uri == backend.store.uri("b1/j1/0.png")
    assert backend.read_raw("b1/j1/0.png") == PNG
    assert backend.store.get("b1/j1/0.png") == PNG


def test_put_file_of_an_on_disk_spool_past_the_multipart_size_stores_every_byte(backend: Backend) -> None:
    with spooled(BIG) as source:
        assert source._rolled  # SpooledTemporaryFile's flag: the body lies in a real file on disk

        backend.store.put_file("b/manifest.jsonl", source, MANIFEST_CONTENT_TYPE)

    assert digest(backend.read_raw("b/manifest.jsonl")) == digest(BIG)


def test_put_file_overwrites_and_stores_an_empty_file(backend: Backend) -> None:
    backend.store.put("b/manifest.jsonl", b"old", MANIFEST_CONTENT_TYPE)

    backend.store.put_file("b/manifest.jsonl", io.BytesIO(b""), MANIFEST_CONTENT_TYPE)

    assert backend.read_raw("b/manifest.jsonl") == b""


def test_put_file_refuses_keys_that_leave_the_root(backend: Backend) -> None:
    with pytest.raises(ValueError):
        backend.store.put_file("../escape.jsonl", io.BytesIO(b"x"), MANIFEST_CONTENT_TYPE)


def test_write_manifest_stores_the_lines_it_read_and_records_the_uri(
    backend: Backend, redis_url: str
) -> None:
    # Given a batch of 2,000 jobs with 4 KB specs: a ~9 MB manifest, on disk and multipart on S3
    batch, n = f"m{uuid.uuid4().hex[:10]}", 2000
    with redis.Redis.from_url(redis_url) as client:
        status = StatusStore(client, Keys(f"kbt-{uuid.uuid4().hex[:8]}"), ttl_s=600)
        status.create_jobs(batch, [(i, 1000 + i) for i in range(n)])
        for i in range(n):
            job = job_id(batch, i)
            status.start(job, "w-test", 2, {"prompt": f"Кошка №{i} " + "x" * 4000, "seed": 1000 + i})
            if i % 3:
                status.succeed(job, [backend.store.uri(f"{batch}/{job}/0.png")], "")
            else:
                status.fail(job, "bad_input", f"изображение {i}: cannot read")

        # When its manifest is written
        uri = write_manifest(status, backend.store, batch)

        # Then the store holds exactly the lines joined in memory, in index order, and the batch knows where
        expected = "".join(encode_line(line) for line in manifest_lines(status, batch)).encode()
        stored = backend.read_raw(manifest_key(batch))
        assert len(expected) > MULTIPART_BYTES
        assert digest(stored) == digest(expected)
        assert [json.loads(x)["job_id"] for x in stored.decode().splitlines()] == [
            job_id(batch, i) for i in range(n)
        ]
        assert uri == backend.store.uri(manifest_key(batch))
        assert status.batch(batch).manifest == uri


# --- S3Storage on the real endpoint ---------------------------------------------------------------


def test_put_sets_the_content_type(endpoint: str, bucket: str) -> None:
    store = S3Storage.from_settings(s3_settings(endpoint, bucket))

    store.put("b/j/0.png", PNG, "image/png")
    store.put("b/j.json", b"{}", "application/json")

    head = client(endpoint).head_object
    assert head(Bucket=bucket, Key=f"{PREFIX}/b/j/0.png")["ContentType"] == "image/png"
    assert head(Bucket=bucket, Key=f"{PREFIX}/b/j.json")["ContentType"] == "application/json"


def test_uri_names_bucket_and_prefix_and_put_returns_it(endpoint: str, bucket: str) -> None:
    store = S3Storage.from_settings(s3_settings(endpoint, bucket, prefix="runs/2024/"))

    assert store.put("b/j/0.png", PNG, "image/png") == f"s3://{bucket}/runs/2024/b/j/0.png"


def test_storage_url_without_prefix_uses_the_bucket_root(endpoint: str, bucket: str) -> None:
    store = S3Storage.from_settings(s3_settings(endpoint, bucket, prefix=""))

    uri = store.put("b/j/0.png", PNG, "image/png")

    assert uri == f"s3://{bucket}/b/j/0.png"
    assert store.key_for(uri) == "b/j/0.png"
    assert client(endpoint).get_object(Bucket=bucket, Key="b/j/0.png")["Body"].read() == PNG


def test_presigned_url_serves_the_bytes_over_plain_http(endpoint: str, bucket: str) -> None:
    store = S3Storage.from_settings(s3_settings(endpoint, bucket))
    store.put("b/j/0.png", PNG, "image/png")

    url = store.presign("b/j/0.png", expires_s=300)
    with urllib.request.urlopen(url, timeout=10) as response:
        body, content_type = response.read(), response.headers["Content-Type"]

    assert url.startswith(f"{endpoint}/{bucket}/{PREFIX}/b/j/0.png?")
    assert "X-Amz-Expires=300" in url
    assert (body, content_type) == (PNG, "image/png")


def test_a_big_put_file_is_one_multipart_object_with_the_content_type(endpoint: str, bucket: str) -> None:
    store = S3Storage.from_settings(s3_settings(endpoint, bucket))

    with spooled(BIG) as source:
        uri = store.put_file("b/manifest.jsonl", source, MANIFEST_CONTENT_TYPE)

    raw = client(endpoint)
    head = raw.head_object(Bucket=bucket, Key=f"{PREFIX}/b/manifest.jsonl")
    assert uri == f"s3://{bucket}/{PREFIX}/b/manifest.jsonl"
    assert head["ETag"].endswith('-3"')  # a multipart upload's ETag counts its parts
    assert (head["ContentType"], head["ContentLength"]) == (MANIFEST_CONTENT_TYPE, len(BIG))
    assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_small_put_file_is_a_single_put_with_the_content_type(endpoint: str, bucket: str) -> None:
    store = S3Storage.from_settings(s3_settings(endpoint, bucket))

    store.put_file("b/manifest.jsonl", io.BytesIO(b'{"a":1}\n'), MANIFEST_CONTENT_TYPE)

    head = client(endpoint).head_object(Bucket=bucket, Key=f"{PREFIX}/b/manifest.jsonl")
    assert "-" not in head["ETag"] and head["ContentType"] == MANIFEST_CONTENT_TYPE


@pytest.mark.parametrize("body", [b"small", BIG], ids=["single", "multipart"])
def test_put_file_to_a_missing_bucket_names_the_bucket(endpoint: str, body: bytes) -> None:
    store = S3Storage.from_settings(s3_settings(endpoint, "kbt-no-such-bucket"))

    with pytest.raises(StorageUnavailable, match="bucket 'kbt-no-such-bucket' does not exist"):
        store.put_file("b/manifest.jsonl", io.BytesIO(body), MANIFEST_CONTENT_TYPE)


def test_open_storage_returns_s3_storage_for_s3_urls(endpoint: str, bucket: str) -> None:
    store = open_storage(s3_settings(endpoint, bucket))

    assert isinstance(store, S3Storage)
    assert (store.bucket, store.prefix) == (bucket, PREFIX)


def test_check_on_a_missing_bucket_names_the_bucket(endpoint: str) -> None:
    store = S3Storage.from_settings(s3_settings(endpoint, "kbt-no-such-bucket"))

    with pytest.raises(StorageUnavailable, match="bucket 'kbt-no-such-bucket' does not exist"):
        store.check()


def test_get_from_a_missing_bucket_is_unavailable_not_a_missing_key(endpoint: str) -> None:
    store = S3Storage.from_settings(s3_settings(endpoint, "kbt-no-such-bucket"))

    with pytest.raises(StorageUnavailable):
        store.get("b/j.json")


@pytest.mark.parametrize(
    ("case", "hint"),
    [("unknown key id", "InvalidAccessKeyId.*s3_access_key_id"), ("wrong secret", "s3_secret_access_key")],
)
def test_check_with_refused_credentials_says_which_one(
    endpoint: str, bucket: str, case: str, hint: str
) -> None:
    with enforced_auth(endpoint) as (key_id, secret):
        if case == "unknown key id":
            key_id = "AKIAUNKNOWNUNKNOWN00"
        else:
            secret = "not-the-secret"
        store = S3Storage.from_settings(
            s3_settings(endpoint, bucket, s3_access_key_id=key_id, s3_secret_access_key=secret)
        )

        with pytest.raises(StorageUnavailable, match=hint):
            store.check()


def test_check_with_valid_credentials_passes_while_moto_enforces_auth(endpoint: str, bucket: str) -> None:
    with enforced_auth(endpoint) as (key_id, secret):
        store = S3Storage.from_settings(
            s3_settings(endpoint, bucket, s3_access_key_id=key_id, s3_secret_access_key=secret)
        )

        store.check()


def test_outage_is_storage_unavailable_within_seconds_and_recovers_after_restart(tmp_path: Path) -> None:
    with S3Server() as server:
        name = create_bucket(server.endpoint_url)
        store = S3Storage.from_settings(s3_settings(server.endpoint_url, name, s3_max_attempts=2))
        store.put("b/j/0.png", b"before", "image/png")

        server.stop()
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="cannot connect"):
            store.put("b/j/1.png", b"during", "image/png")
        with pytest.raises(StorageUnavailable, match="cannot connect"):
            store.get("b/j/0.png")  # an outage must not look like a missing object
        elapsed = time.monotonic() - started

        server.start()
        store.put("b/j/1.png", b"after", "image/png")

        assert elapsed < 10
        assert (store.get("b/j/0.png"), store.get("b/j/1.png")) == (b"before", b"after")


# --- error translation for answers moto does not give (injected with botocore's Stubber) ----------


@pytest.fixture(scope="module")
def stubbed() -> S3Storage:
    """A store whose client never reaches the network while a Stubber is active on it."""
    return S3Storage(make_client(s3_settings("http://127.0.0.1:9", "kbt-stub")), "kbt-stub", PREFIX)


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        ("SlowDown", 503, "throttled"),
        ("InternalError", 500, "server error InternalError"),
        ("ServiceUnavailable", 503, "server error"),
        ("AccessDenied", 403, "access denied"),
        ("NoSuchBucket", 404, "bucket 'kbt-stub' does not exist"),
        ("InvalidAccessKeyId", 403, "s3_access_key_id"),
        ("SignatureDoesNotMatch", 403, "s3_secret_access_key"),
    ],
)
def test_error_answers_become_storage_unavailable(
    stubbed: S3Storage, code: str, status: int, message: str
) -> None:
    store = stubbed
    with Stubber(store.client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        stub.add_client_error("get_object", service_error_code=code, http_status_code=status)
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)

        with pytest.raises(StorageUnavailable, match=message):
            store.put("b/j/0.png", b"x", "image/png")
        with pytest.raises(StorageUnavailable, match=message):
            store.get("b/j/0.png")
        with pytest.raises(StorageUnavailable, match=message):  # uploads of a file (manifests) too
            store.put_file("b/manifest.jsonl", io.BytesIO(b"x"), MANIFEST_CONTENT_TYPE)


def test_no_such_key_answer_is_key_error_with_our_key(stubbed: S3Storage) -> None:
    store = stubbed
    with Stubber(store.client) as stub:
        stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)

        with pytest.raises(KeyError) as caught:
            store.get("b/j.json")

    assert caught.value.args == ("b/j.json",)


# --- configuration ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["s3://", "s3:///prefix", "s3://ab/x", "s3://Upper-Case/x", "file:///tmp/x", "s3://bucket/a/../b"]
)
def test_invalid_storage_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_storage_url(url)


def test_storage_url_prefix_loses_its_slashes() -> None:
    assert parse_storage_url("s3://my-bucket/a/b/") == ("my-bucket", "a/b")
    assert parse_storage_url("s3://my-bucket") == ("my-bucket", "")


def test_half_a_credential_pair_is_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        make_client(Settings(storage_url="s3://kbt-x/out", s3_access_key_id="only-the-id"))


def test_uploads_stay_on_the_botocore_client() -> None:
    from kandinsky_batch.storage.s3 import TRANSFER_CONFIG

    assert TRANSFER_CONFIG.preferred_transfer_client == "classic"
    assert TRANSFER_CONFIG.multipart_threshold == TRANSFER_CONFIG.multipart_chunksize == MULTIPART_BYTES


def test_client_config_follows_settings() -> None:
    settings = s3_settings("http://127.0.0.1:9", "kbt-x", s3_region="eu-west-1", s3_max_attempts=7)

    config = make_client(settings).meta.config

    assert config.region_name == "eu-west-1"
    assert config.retries == {"mode": "standard", "total_max_attempts": 7}
    assert config.s3 == {"addressing_style": "path"}
    assert (config.request_checksum_calculation, config.response_checksum_validation) == (
        "when_required",
        "when_required",
    )
