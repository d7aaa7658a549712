"""`export_batch`: a batch's succeeded images as a dataset, shard by shard, resumable.

Shard k holds the jobs with indices [k * shard_size, (k + 1) * shard_size): which jobs a shard
holds never depends on what other shards held, so a shard can be skipped or rewritten alone,
and reading starts at its first index (`StatusReader.jobs(start=...)`).
"""

from __future__ import annotations

import logging
import time

from kandinsky_batch.errors import NotFound, StorageUnavailable
from kandinsky_batch.keys import Keys
from kandinsky_batch.redis_client import connect
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage, open_storage
from kandinsky_batch.store.reads import StatusReader
from producer.export.options import ExportError, ExportOptions, ExportSummary, Format
from producer.export.shards import JobCursor, export_shard, previous_run

log = logging.getLogger(__name__)


def open_destination(settings: Settings, to: str) -> Storage:
    """A Storage for `to` with the same settings (S3 endpoint, credentials), checked writable."""
    try:
        dest = open_storage(settings.model_copy(update={"storage_url": to}))
        dest.check()
    except ValueError as exc:
        raise ExportError(f"--to {to!r}: {exc}") from exc
    except StorageUnavailable as exc:
        raise ExportError(f"--to {to!r} is not writable: {exc}", exit_code=1) from exc
    return dest


def export_batch(
    settings: Settings,
    batch_id: str,
    to: str,
    format: Format | str = Format.WEBDATASET,
    *,
    shard_size: int = 10_000,
    image_format: str | None = None,
    min_clip_score: float | None = None,
    threads: int = 8,
    overwrite: bool = False,
    finished_only: bool = False,
) -> ExportSummary:
    """Export `batch_id`'s succeeded images to the storage URI `to`; ExportError for bad input."""
    try:
        fmt = Format(format)
    except ValueError:
        raise ExportError(f"unknown format {format!r}: use one of {', '.join(Format)}") from None
    options = ExportOptions(fmt, shard_size, image_format, min_clip_score, threads, overwrite, finished_only)
    started = time.monotonic()
    client = connect(settings.redis_url)
    try:
        reader = StatusReader(client, Keys(settings.key_prefix))
        try:
            batch = reader.batch(batch_id)
        except NotFound:
            raise ExportError(f"batch {batch_id!r} not found") from None
        if not batch.done and not finished_only:
            raise ExportError(
                f"batch {batch_id!r} is not finished ({batch.finished} of {batch.total} jobs): "
                "wait for it, or pass --finished-only to export the finished part"
            )
        dest = open_destination(settings, to)
        summary = ExportSummary(batch_id, to, fmt)
        _export_shards(reader, open_storage(settings), dest, batch_id, options, summary)
    finally:
        client.close()
    summary.duration_s = time.monotonic() - started
    return summary


def _export_shards(
    reader: StatusReader,
    source: Storage,
    dest: Storage,
    batch_id: str,
    options: ExportOptions,
    summary: ExportSummary,
) -> None:
    """Each shard in index order; a complete one from an earlier run is skipped without reading it."""
    size = options.shard_size
    cursor = JobCursor(reader.jobs(batch_id))
    while cursor.head is not None:
        shard = cursor.head.index // size
        previous = None if options.overwrite else previous_run(dest, shard, options)
        if previous is not None and previous.complete:
            summary.shards_skipped.append(shard)
            cursor = JobCursor(reader.jobs(batch_id, start=(shard + 1) * size))
            continue
        counts = export_shard(source, dest, shard, cursor.take_until((shard + 1) * size), options)
        log.info("shard %05d: %d samples from %d jobs", shard, counts.samples, counts.jobs)
        summary.shards_written.append(shard)
        summary.counts.add(counts)
