"""One shard's files in each format, built in temp files and uploaded whole with `put_file`.

Only the shard being written is open; an image is in memory from its read until its sample is
appended. Tar members get fixed owners, modes and times, so the same samples give the same bytes.
"""

from __future__ import annotations

import io
import re
import tarfile
import tempfile
import unicodedata
from contextlib import ExitStack
from typing import IO, Protocol

from kandinsky_batch.storage import Storage
from producer.export.options import Format
from producer.export.samples import Sample
from producer.export.table import RowWriter

CONTENT_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
TAR_MTIME = 0  # fixed: the bytes must not depend on when the export ran
SLUG_CHARS = 40


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def stats_key(shard: int) -> str:
    return f"{shard_name(shard)}_stats.json"


class ShardWriter(Protocol):
    def add(self, sample: Sample) -> None: ...

    def finish(self) -> None:
        """Upload what was added; after this the shard's data objects are in place."""
        ...

    def close(self) -> None:
        """Drop the temp files (also after a failure)."""
        ...


class WebDatasetShard:
    """`{shard}.tar` (key.ext, key.txt, key.json per sample) and `{shard}.parquet` (one row per sample)."""

    def __init__(self, dest: Storage, shard: int) -> None:
        self.dest, self.name = dest, shard_name(shard)
        self._files = ExitStack()  # the temp files, closed (deleted) by close()
        self._tar_file = self._files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
        self._tar = tarfile.open(fileobj=self._tar_file, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._table_file = self._files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
        self._rows = RowWriter(self._table_file, with_images=False)

    def add(self, sample: Sample) -> None:
        for ext, data in (
            (sample.ext, sample.image),
            ("txt", sample.caption.encode()),
            ("json", sample.json_bytes()),
        ):
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._rows.add(sample)

    def finish(self) -> None:
        self._tar.close()
        self._rows.close()
        _upload(self.dest, f"{self.name}.tar", self._tar_file, "application/x-tar")
        _upload(self.dest, f"{self.name}.parquet", self._table_file, "application/vnd.apache.parquet")

    def close(self) -> None:
        self._files.close()


class ParquetShard:
    """`{shard}.parquet`: the same rows as WebDataset's, with the image bytes in an `image` column."""

    def __init__(self, dest: Storage, shard: int) -> None:
        self.dest, self.name = dest, shard_name(shard)
        self._files = ExitStack()
        self._file = self._files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
        self._rows = RowWriter(self._file, with_images=True)

    def add(self, sample: Sample) -> None:
        self._rows.add(sample)

    def finish(self) -> None:
        self._rows.close()
        _upload(self.dest, f"{self.name}.parquet", self._file, "application/vnd.apache.parquet")

    def close(self) -> None:
        self._files.close()


class FilesShard:
    """`{shard}/{key}_{slug}.{ext}` with `.txt` and `.json` beside it: a folder a person can browse."""

    def __init__(self, dest: Storage, shard: int) -> None:
        self.dest, self.name = dest, shard_name(shard)

    def add(self, sample: Sample) -> None:
        stem = f"{self.name}/{sample.key}" + (f"_{s}" if (s := slug(sample.caption)) else "")
        self.dest.put(f"{stem}.{sample.ext}", sample.image, CONTENT_TYPES[sample.ext])
        self.dest.put(f"{stem}.txt", sample.caption.encode(), "text/plain; charset=utf-8")
        self.dest.put(f"{stem}.json", sample.json_bytes(), "application/json")

    def finish(self) -> None:
        """Each sample's files went to storage as it was added: nothing is left to upload."""

    def close(self) -> None:
        """No temp files are kept for this format."""


def slug(caption: str) -> str:
    """The caption's first words in ASCII letters and digits, for a file name ('' if none)."""
    ascii_text = unicodedata.normalize("NFKD", caption).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return words[:SLUG_CHARS].rstrip("-")


def _upload(dest: Storage, key: str, fh: IO[bytes], content_type: str) -> None:
    fh.flush()
    fh.seek(0)
    dest.put_file(key, fh, content_type)


def open_shard(fmt: Format, dest: Storage, shard: int) -> ShardWriter:
    writers: dict[Format, type[WebDatasetShard] | type[ParquetShard] | type[FilesShard]] = {
        Format.WEBDATASET: WebDatasetShard,
        Format.PARQUET: ParquetShard,
        Format.FILES: FilesShard,
    }
    return writers[fmt](dest, shard)
