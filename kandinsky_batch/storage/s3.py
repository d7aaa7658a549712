"""S3-compatible storage (`s3://bucket/prefix`): AWS S3, MinIO, Ceph, R2 and moto.

botocore errors are translated here, at the edge: a missing key on `get` is a
KeyError, everything else that stops a request (no connection, timeouts, 5xx,
throttling, a missing bucket, refused credentials) is StorageUnavailable, with
a message that names the bucket and the likely cause. botocore's own retries
(standard mode, `s3_max_attempts`) run first; Celery's retries come after.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from kandinsky_batch.errors import StorageUnavailable
from kandinsky_batch.settings import Settings

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
CHECK_KEY = ".kandinsky-batch-check"
MULTIPART_BYTES = 8 * 1024 * 1024  # `put_file` bodies from this size go up in parts of this size

# "classic" keeps uploads on our botocore client (its endpoint, retries, timeouts, checksum settings
# and error types): boto3 would otherwise switch to its CRT client on some EC2 instance types.
TRANSFER_CONFIG = TransferConfig(
    multipart_threshold=MULTIPART_BYTES,
    multipart_chunksize=MULTIPART_BYTES,
    preferred_transfer_client="classic",
)

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_MISSING_KEY_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_BAD_KEY_CODES = frozenset({"InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "TokenRefreshRequired"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"})
_THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
)


def parse_storage_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`; the prefix has no leading or trailing slash."""
    scheme, sep, rest = url.partition("://")
    if scheme != "s3" or not sep:
        raise ValueError(f"not an S3 URL: {url!r} (use s3://bucket/prefix)")
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.fullmatch(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r} in {url!r}")
    prefix = prefix.strip("/")
    if prefix:
        _check_key(prefix)
    return bucket, prefix


def _check_key(key: str) -> None:
    """Refuse keys that FileStorage would refuse too, so both backends accept the same keys."""
    parts = key.split("/")
    if not key or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid storage key {key!r}")


def make_client(settings: Settings) -> Any:
    """A boto3 S3 client configured from settings (endpoint, region, credentials, retries, timeouts)."""
    if (settings.s3_access_key_id is None) != (settings.s3_secret_access_key is None):
        raise ValueError("set both s3_access_key_id and s3_secret_access_key, or neither")
    config = Config(
        region_name=settings.s3_region,
        # total_max_attempts counts the first try; botocore's "max_attempts" key counts only retries.
        retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        s3={"addressing_style": settings.s3_addressing_style},
        signature_version="s3v4",  # presigned URLs would otherwise be SigV2, refused by newer regions
        # boto3 >= 1.36 adds CRC checksums by default, which several non-AWS stores reject.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra="kandinsky-batch",
    )
    # A session of our own: boto3's default session is not thread-safe to create clients from.
    session = boto3.session.Session(
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        region_name=settings.s3_region,
    )
    return session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


class S3Storage:
    """One bucket and key prefix; keys map to `prefix/key` objects, URIs are `s3://bucket/prefix/key`."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        bucket, prefix = parse_storage_url(settings.storage_url)
        return cls(make_client(settings), bucket, prefix)

    def _object_key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> str:
        name = self._object_key(key)
        with self._translated("put", name):
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data, ContentType=content_type)
        return self.uri(key)

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str) -> str:
        """Upload in parts past MULTIPART_BYTES; a failed multipart upload is aborted by boto3."""
        name = self._object_key(key)
        with self._translated("put", name):
            self.client.upload_fileobj(
                fileobj, self.bucket, name, ExtraArgs={"ContentType": content_type}, Config=TRANSFER_CONFIG
            )
        return self.uri(key)

    def get(self, key: str) -> bytes:
        name = self._object_key(key)
        with self._translated("get", name, missing_key=key):
            response = self.client.get_object(Bucket=self.bucket, Key=name)
            body: bytes = response["Body"].read()
        return body

    def chunks(self, key: str, size: int = 1 << 20) -> Iterator[bytes]:
        name = self._object_key(key)
        with self._translated("get", name, missing_key=key):
            body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
            try:
                yield from body.iter_chunks(size)
            finally:
                body.close()

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def key_for(self, uri: str) -> str | None:
        head = f"s3://{self.bucket}/" + (f"{self.prefix}/" if self.prefix else "")
        if not uri.startswith(head):
            return None
        key = uri[len(head) :]
        try:
            _check_key(key)
        except ValueError:
            return None
        return key

    def check(self) -> None:
        """Write a small object: proves the bucket exists and these credentials may write to it."""
        self.put(CHECK_KEY, b"ok", "text/plain")

    def presign(self, key: str, expires_s: int) -> str:
        """A plain HTTPS GET URL for the object, valid for `expires_s` seconds (no network call)."""
        name = self._object_key(key)
        with self._translated("presign", name):
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=expires_s
            )
        return url

    def local_path(self, key: str) -> None:
        """An object in a bucket is no file on this machine."""
        return None

    @contextmanager
    def _translated(self, op: str, name: str, missing_key: str | None = None) -> Iterator[None]:
        """botocore errors in the block become ours; a missing object is KeyError(missing_key) if given."""
        try:
            yield
        except ParamValidationError:
            raise  # a bug in our call, not an outage: retrying would not help
        except ClientError as exc:
            if missing_key is not None and _code(exc) in _MISSING_KEY_CODES:
                raise KeyError(missing_key) from None
            raise self._unavailable(exc, op, name) from exc
        except BotoCoreError as exc:
            raise self._unavailable(exc, op, name) from exc

    def _unavailable(self, exc: ClientError | BotoCoreError, op: str, name: str) -> StorageUnavailable:
        """Our error for a failed request, saying what to fix where we can tell."""
        where = f"s3://{self.bucket}/{name}"
        endpoint = self.client.meta.endpoint_url
        if isinstance(exc, NoCredentialsError):
            return StorageUnavailable(
                f"S3 {op} {where}: no credentials found; set s3_access_key_id and s3_secret_access_key "
                "or configure the standard AWS credential chain"
            )
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            return StorageUnavailable(f"S3 {op} {where}: cannot connect to {endpoint}: {exc}")
        if isinstance(exc, ReadTimeoutError):
            return StorageUnavailable(f"S3 {op} {where}: {endpoint} did not answer in time: {exc}")
        if isinstance(exc, BotoCoreError):
            return StorageUnavailable(f"S3 {op} {where}: {type(exc).__name__}: {exc}")
        code, status = _code(exc), _status(exc)
        if code == "NoSuchBucket":
            return StorageUnavailable(f"S3 bucket {self.bucket!r} does not exist at {endpoint}")
        if code in _BAD_KEY_CODES:
            return StorageUnavailable(
                f"S3 {op} {where}: the store rejected the access key ({code}); check s3_access_key_id"
            )
        if code == "SignatureDoesNotMatch":
            return StorageUnavailable(
                f"S3 {op} {where}: request signature rejected (SignatureDoesNotMatch); "
                "check s3_secret_access_key and s3_region"
            )
        if code in _DENIED_CODES or status == 403:
            return StorageUnavailable(
                f"S3 {op} {where}: access denied ({code}); the credentials lack permission on bucket "
                f"{self.bucket!r}"
            )
        if code in _THROTTLE_CODES or status == 429:
            return StorageUnavailable(f"S3 {op} {where}: throttled by the store ({code}); retry later")
        if status >= 500:
            return StorageUnavailable(f"S3 {op} {where}: server error {code} (HTTP {status}); retry later")
        return StorageUnavailable(f"S3 {op} {where}: {code} (HTTP {status}): {_message(exc)}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
