"""`file:///dir` storage: a folder on local disk, for one machine and for tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlparse

from kandinsky_batch.errors import StorageUnavailable


def _umask() -> int:
    """The process umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode any tool's new file gets (0666 less the umask), for files made with mkstemp (0600).

    Reading the umask sets it for a moment: call this once, before threads that make files start.
    """
    return 0o666 & ~_umask()


class FileStorage:
    """A folder on local disk; each write is a temp file renamed into place (atomic).

    Files get the mode any tool's new files get (0666 less the umask), not mkstemp's 0600,
    so a dataset folder shared by a team is readable by the team.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mode = new_file_mode()

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
                os.fchmod(fd, self.mode)
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

    def chunks(self, key: str, size: int = 1 << 20) -> Iterator[bytes]:
        try:
            fh = self._path(key).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):  # no object of that name
            raise KeyError(key) from None
        with fh:
            yield from iter(lambda: fh.read(size), b"")

    def uri(self, key: str) -> str:
        return self._path(key).as_uri()

    def key_for(self, uri: str) -> str | None:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            return None
        try:
            path = Path(unquote(parsed.path)).resolve()
        except (ValueError, OSError):  # a NUL byte, a symlink loop: no object of this store
            return None
        root = self.root.resolve()
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else None

    def check(self) -> None:
        self.put(".kandinsky-batch-check", b"ok", "text/plain")

    def presign(self, key: str, expires_s: int) -> str:
        """A local file needs no signature: its `file://` URI."""
        return self.uri(key)

    def local_path(self, key: str) -> Path:
        return self._path(key)


def file_root(url: str) -> Path:
    """The folder of a `file:///dir` URL (a plain path is accepted too)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("", "file"):
        raise ValueError(f"not a file URL: {url}")
    return Path(unquote(parsed.path) if parsed.scheme else url)
