"""Where images, metadata and manifests go: `file:///dir` or `s3://bucket/prefix`.

Shared by both sides: workers write, producers read results and manifests.

Keys are deterministic (batch, job, image index), so a rerun of a job
overwrites its objects instead of adding new ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import unquote, urlparse

from producer.errors import StorageUnavailable
from producer.settings import Settings


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

    def uri(self, key: str) -> str: ...

    def key_for(self, uri: str) -> str | None:
        """The key of one of this store's URIs, or None if the URI is elsewhere."""
        ...

    def check(self) -> None:
        """Raise StorageUnavailable unless the store can be written."""
        ...


def image_key(batch_id: str, job_id: str, index: int, ext: str) -> str:
    return f"{batch_id}/{job_id}/{index}.{ext}"


def metadata_key(batch_id: str, job_id: str) -> str:
    return f"{batch_id}/{job_id}.json"


def manifest_key(batch_id: str) -> str:
    return f"{batch_id}/manifest.jsonl"


class FileStorage:
    """A folder on local disk; each write is a temp file renamed into place (atomic)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"key {key!r} leaves the storage root")
        return path

    def put(self, key: str, data: bytes, content_type: str) -> str:
        return self._write(key, lambda fh: fh.write(data))

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str) -> str:
        return self._write(key, lambda fh: shutil.copyfileobj(fileobj, fh))

    def _write(self, key: str, write: Callable[[IO[bytes]], object]) -> str:
        """Fill a temp file beside the target, then rename it over: readers never see half an object.

        The temp file is removed if the write fails, so failures leave no litter in the store.
        """
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    write(fh)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageUnavailable(f"cannot write {path}: {exc}") from exc
        return path.as_uri()

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_for(self, uri: str) -> str | None:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            return None
        path = Path(unquote(parsed.path)).resolve()
        root = self.root.resolve()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else None

    def check(self) -> None:
        self.put(".kandinsky-batch-check", b"ok", "text/plain")


def file_root(url: str) -> Path:
    """The folder of a `file:///dir` URL (a plain path is accepted too)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"not a file URL: {url}")
    return Path(unquote(parsed.path) if parsed.scheme else url)


def open_storage(settings: Settings) -> Storage:
    """The backend named by `storage_url`."""
    scheme = urlparse(settings.storage_url).scheme
    if scheme in ("", "file"):
        return FileStorage(file_root(settings.storage_url))
    if scheme == "s3":
        from producer.s3 import S3Storage

        return S3Storage.from_settings(settings)
    raise ValueError(
        f"unsupported storage URL {settings.storage_url!r}: use file:///dir or s3://bucket/prefix"
    )
