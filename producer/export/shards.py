"""One shard: its jobs (a fixed range of job indices) read in parallel, written, then its stats.

The `_stats.json` goes last, so its presence means the shard's other objects are complete: a
rerun skips such a shard, unless it was made from an unfinished batch or with other options.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kandinsky_batch.errors import StorageUnavailable
from kandinsky_batch.schema import JobState, JobStatus
from kandinsky_batch.storage import Storage
from producer.export.options import Counts, ExportError, ExportOptions
from producer.export.ordered import ordered_map
from producer.export.samples import JobSamples, read_job
from producer.export.writers import open_shard, shard_name, stats_key

AHEAD_PER_THREAD = 4  # jobs read ahead per reader thread: keeps threads busy, memory bounded


class JobCursor:
    """A batch's jobs in index order, with one job of look-ahead (the first of the next shard)."""

    def __init__(self, jobs: Iterator[JobStatus]) -> None:
        self._jobs = jobs
        self.head: JobStatus | None = next(jobs, None)

    def take_until(self, end: int) -> Iterator[JobStatus]:
        """The jobs with index < `end`; `head` is then the first job at or past it (or None)."""
        while self.head is not None and self.head.index < end:
            job, self.head = self.head, next(self._jobs, None)
            yield job


@dataclass(frozen=True)
class Previous:
    """What an earlier run's stats say about a shard."""

    complete: bool  # made from finished jobs only, with these options: skip it


def previous_run(dest: Storage, shard: int, options: ExportOptions) -> Previous | None:
    """The shard's stats from an earlier run, or None if it has none (or unreadable ones)."""
    try:
        stats = json.loads(dest.get(stats_key(shard)))
    except (KeyError, ValueError):
        return None
    except StorageUnavailable as exc:
        raise ExportError(f"cannot read {dest.uri(stats_key(shard))}: {exc}", exit_code=1) from exc
    if stats.get("options") != options.fingerprint():
        raise ExportError(
            f"shard {shard_name(shard)} at {dest.uri(stats_key(shard))} was exported with other options "
            f"({stats.get('options')}); pass --overwrite to replace it, or export to another place"
        )
    return Previous(complete=stats.get("unfinished", 0) == 0)


def export_shard(
    source: Storage, dest: Storage, shard: int, jobs: Iterator[JobStatus], options: ExportOptions
) -> Counts:
    """Read, write and upload one shard from its jobs (in index order); return its counts."""
    started = time.time()
    counts = Counts()

    def read(job: JobStatus) -> JobSamples | None:
        if job.state is not JobState.SUCCEEDED:
            return None
        return read_job(source, job, options.image_format, options.min_clip_score)

    def counted(jobs: Iterator[JobStatus]) -> Iterator[JobStatus]:
        for job in jobs:
            counts.jobs += 1
            if job.state is JobState.FAILED:
                counts.failed += 1
                counts.failure(job.error.code if job.error else "unknown")
            elif job.state is JobState.CANCELED:
                counts.canceled += 1
            elif job.state is not JobState.SUCCEEDED:
                counts.unfinished += 1
            yield job

    writer = open_shard(options.format, dest, shard)
    try:
        ahead = options.threads * AHEAD_PER_THREAD
        for found in ordered_map(read, counted(jobs), options.threads, ahead):
            if found is None:
                continue
            counts.missing_output += found.missing
            counts.filtered += found.filtered
            for _ in range(found.missing):
                counts.failure("missing_output")
            for sample in found.samples:
                writer.add(sample)
                counts.samples += 1
        writer.finish()
    except StorageUnavailable as exc:
        raise ExportError(f"cannot write shard {shard_name(shard)} to {dest.uri('')}: {exc}", 1) from exc
    finally:
        writer.close()
    _put_stats(dest, shard, counts, options, started, options.shard_size)
    return counts


def _put_stats(
    dest: Storage, shard: int, counts: Counts, options: ExportOptions, started: float, size: int
) -> None:
    ended = time.time()
    stats: dict[str, Any] = {
        "shard": shard,
        "first_index": shard * size,
        "end_index": (shard + 1) * size,  # exclusive
        **counts.as_dict(),
        "options": options.fingerprint(),
        "start_time": started,
        "end_time": ended,
        "duration_s": round(ended - started, 3),
    }
    body = json.dumps(stats, indent=1, sort_keys=True).encode()
    try:
        dest.put(stats_key(shard), body, "application/json")
    except StorageUnavailable as exc:
        raise ExportError(f"cannot write {dest.uri(stats_key(shard))}: {exc}", exit_code=1) from exc
