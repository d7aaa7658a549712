"""What an export is asked to do, what it did, and the one error it raises for bad input."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Format(StrEnum):
    WEBDATASET = "webdataset"  # {shard:05d}.tar + .parquet + _stats.json (img2dataset's layout)
    PARQUET = "parquet"  # {shard:05d}.parquet with the image bytes in a column, + _stats.json
    FILES = "files"  # {shard:05d}/{key}_{slug}.{png,txt,json}, + _stats.json


IMAGE_FORMATS = ("png", "jpg", "webp")


class ExportError(Exception):
    """Input the export cannot go on with: unknown batch, unfinished batch, unwritable `--to`.

    `exit_code` is what the CLI exits with: 2 for what the caller asked (unknown or unfinished
    batch, bad options), 1 for a destination that cannot be written.
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class ExportOptions:
    format: Format = Format.WEBDATASET
    shard_size: int = 10_000  # job indices per shard: shard k holds jobs [k * size, (k + 1) * size)
    image_format: str | None = None  # None: the bytes as stored
    min_clip_score: float | None = None
    threads: int = 8
    overwrite: bool = False
    finished_only: bool = False

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise ExportError(f"shard size must be at least 1, not {self.shard_size}")
        if self.threads < 1:
            raise ExportError(f"threads must be at least 1, not {self.threads}")
        if self.image_format is not None and self.image_format not in IMAGE_FORMATS:
            raise ExportError(f"image format must be one of {', '.join(IMAGE_FORMATS)}")

    def fingerprint(self) -> dict[str, Any]:
        """What decides a shard's contents: a shard made with other values is not skipped silently."""
        return {
            "format": self.format.value,
            "shard_size": self.shard_size,
            "image_format": self.image_format,
            "min_clip_score": self.min_clip_score,
        }


@dataclass
class Counts:
    """Jobs and images of one shard (or of a whole export) by what became of them."""

    jobs: int = 0  # jobs seen in the shard's index range
    samples: int = 0  # images written
    failed: int = 0  # failed jobs (their codes in failures_by_code)
    canceled: int = 0
    unfinished: int = 0  # queued or running jobs (only with finished_only)
    missing_output: int = 0  # images whose object is missing or not an image
    filtered: int = 0  # images under min_clip_score (or with no score when a minimum is set)
    failures_by_code: dict[str, int] = field(default_factory=dict)

    def failure(self, code: str) -> None:
        self.failures_by_code[code] = self.failures_by_code.get(code, 0) + 1

    def add(self, other: Counts) -> None:
        for name in ("jobs", "samples", "failed", "canceled", "unfinished", "missing_output", "filtered"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for code, n in other.failures_by_code.items():
            self.failures_by_code[code] = self.failures_by_code.get(code, 0) + n

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs,
            "samples": self.samples,
            "failed": self.failed,
            "canceled": self.canceled,
            "unfinished": self.unfinished,
            "missing_output": self.missing_output,
            "filtered": self.filtered,
            "failures_by_code": dict(sorted(self.failures_by_code.items())),
        }


@dataclass
class ExportSummary:
    """What one `export_batch` call did; the counts cover the shards it wrote, not those it skipped."""

    batch_id: str
    to: str
    format: Format
    shards_written: list[int] = field(default_factory=list)
    shards_skipped: list[int] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "to": self.to,
            "format": self.format.value,
            "shards_written": self.shards_written,
            "shards_skipped": self.shards_skipped,
            **self.counts.as_dict(),
            "duration_s": round(self.duration_s, 3),
        }
