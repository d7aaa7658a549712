"""FileStorage writes are atomic (a reader sees the old object or the whole new one) and follow the umask."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from kandinsky_batch.errors import StorageUnavailable
from kandinsky_batch.manifest import MANIFEST_CONTENT_TYPE
from kandinsky_batch.storage.file import FileStorage


class WatchedSource(io.RawIOBase):
    """A source that serves `chunks`, noting before each read what `target` holds; then ends or fails."""

    def __init__(self, chunks: list[bytes], target: Path, error: Exception | None = None) -> None:
        self.chunks, self.target, self.error = list(chunks), target, error
        self.seen: list[bytes | None] = []

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.seen.append(self.target.read_bytes() if self.target.exists() else None)
        if not self.chunks:
            if self.error is not None:
                raise self.error
            return 0
        chunk = self.chunks.pop(0)
        n = min(len(chunk), len(buffer))
        buffer[:n] = chunk[:n]
        if n < len(chunk):
            self.chunks.insert(0, chunk[n:])
        return n


CHUNK = b"n" * 100_000  # bigger than any write buffer: it reaches the disk before the next read


def test_file_put_file_shows_the_old_object_until_the_new_one_is_complete(tmp_path: Path) -> None:
    store = FileStorage(tmp_path / "store")
    store.put("b/manifest.jsonl", b"old", MANIFEST_CONTENT_TYPE)
    target = tmp_path / "store" / "b" / "manifest.jsonl"
    source = WatchedSource([CHUNK, CHUNK, CHUNK], target)

    store.put_file("b/manifest.jsonl", source, MANIFEST_CONTENT_TYPE)

    assert len(source.seen) >= 4 and set(source.seen) == {b"old"}  # never a partial file mid-copy
    assert target.read_bytes() == CHUNK * 3
    assert [p.name for p in target.parent.iterdir()] == ["manifest.jsonl"]


@pytest.mark.parametrize(
    ("error", "raised"),
    [(OSError("read failed"), StorageUnavailable), (ValueError("not a file"), ValueError)],
)
def test_file_put_file_that_fails_midway_keeps_the_old_object_and_removes_its_temp_file(
    tmp_path: Path, error: Exception, raised: type[Exception]
) -> None:
    store = FileStorage(tmp_path / "store")
    store.put("b/manifest.jsonl", b"old", MANIFEST_CONTENT_TYPE)
    target = tmp_path / "store" / "b" / "manifest.jsonl"
    source = WatchedSource([CHUNK, CHUNK], target, error)

    with pytest.raises(raised):
        store.put_file("b/manifest.jsonl", source, MANIFEST_CONTENT_TYPE)

    assert set(source.seen) == {b"old"} and target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["manifest.jsonl"]


def test_file_put_file_that_fails_on_a_new_key_leaves_nothing(tmp_path: Path) -> None:
    store = FileStorage(tmp_path / "store")
    target = tmp_path / "store" / "b" / "manifest.jsonl"

    with pytest.raises(StorageUnavailable, match="cannot write"):
        store.put_file("b/manifest.jsonl", WatchedSource([CHUNK], target, OSError("gone")), "text/plain")

    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask_as_any_tools_files_do(tmp_path: Path, umask: int, mode: int):
    old = os.umask(umask)
    try:
        store = FileStorage(tmp_path / "store")
        image = store.put("b/j/0.png", b"png", "image/png")
        manifest = store.put_file("b/manifest.jsonl", io.BytesIO(b"{}\n"), "application/x-ndjson")
    finally:
        os.umask(old)
    for uri in (image, manifest):
        assert stat.S_IMODE(Path(urlparse(uri).path).stat().st_mode) == mode


def test_local_path_is_the_file_a_key_is_stored_in_and_never_outside_the_root(tmp_path: Path):
    store = FileStorage(tmp_path / "store")
    uri = store.put("b/j/0.png", b"png", "image/png")
    path = store.local_path("b/j/0.png")
    assert path.read_bytes() == b"png" and path.as_uri() == uri
    assert store.local_path("sources/t/") == (tmp_path / "store" / "sources" / "t").resolve()
    with pytest.raises(ValueError):
        store.local_path("../elsewhere.png")
