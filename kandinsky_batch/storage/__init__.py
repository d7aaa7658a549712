"""Where images, metadata and manifests go: `file:///dir` or `s3://bucket/prefix`.

Shared by both sides: workers write, producers read results and manifests.

Keys are deterministic (batch, job, image index), so a rerun of a job
overwrites its objects instead of adding new ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import urlparse

from kandinsky_batch.settings import Settings


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store `data` under `key`; return the object's URI."""
        ...

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str) -> str:
        """Store the rest of `fileobj` (from its position to its end) under `key`; return the URI.

        For bodies too big to hold in memory at once, such as a big batch's manifest.
        """
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; KeyError if there is none."""
        ...

    def chunks(self, key: str, size: int = 1 << 20) -> Iterator[bytes]:
        """The object's bytes a piece at a time, for objects too big to hold (a JSONL source).

        KeyError if there is none, raised on the first piece.
        """
        ...

    def uri(self, key: str) -> str: ...

    def key_for(self, uri: str) -> str | None:
        """The key of one of this store's URIs, or None if the URI is elsewhere."""
        ...

    def check(self) -> None:
        """Raise StorageUnavailable unless the store can be written."""
        ...

    def presign(self, key: str, expires_s: int) -> str:
        """A URL a plain HTTP client can GET for `expires_s` seconds (s3: presigned https; file: the URI)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file on this machine that holds `key`, or None for a store that is not a local folder.

        For whoever must name a path (the worker's allowed input folders, a page's relative links,
        the API serving a file); `local_path("")` is the store's own folder.
        """
        ...


def image_key(batch_id: str, job_id: str, index: int, ext: str) -> str:
    return f"{batch_id}/{job_id}/{index}.{ext}"


def metadata_key(batch_id: str, job_id: str) -> str:
    return f"{batch_id}/{job_id}.json"


def input_key(batch_id: str, sha256: str, ext: str) -> str:
    """An inline input, stored once per batch under its content hash."""
    return f"{batch_id}/inputs/{sha256}.{ext}"


def manifest_key(batch_id: str) -> str:
    return f"{batch_id}/manifest.jsonl"


def open_storage(settings: Settings) -> Storage:
    """The backend named by `storage_url`."""
    scheme = urlparse(settings.storage_url).scheme
    if scheme in ("", "file"):
        from kandinsky_batch.storage.file import FileStorage, file_root

        return FileStorage(file_root(settings.storage_url))
    if scheme == "s3":
        from kandinsky_batch.storage.s3 import S3Storage

        return S3Storage.from_settings(settings)
    raise ValueError(
        f"unsupported storage URL {settings.storage_url!r}: use file:///dir or s3://bucket/prefix"
    )
