"""S3Storage against a real S3 endpoint (moto's server over HTTP), and the Storage contract on both backends."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber

from producer.errors import StorageUnavailable
from producer.s3 import S3Storage, make_client, parse_storage_url
from producer.settings import Settings
from producer.storage import FileStorage, Storage, image_key, metadata_key, open_storage
from tests.s3server import S3Server, client, create_bucket, enforced_auth, running_s3_server

pytestmark = pytest.mark.integration

PREFIX = "out"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


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

        with pytest.raises(StorageUnavailable, match=message):
            store.put("b/j/0.png", b"x", "image/png")
        with pytest.raises(StorageUnavailable, match=message):
            store.get("b/j/0.png")


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
