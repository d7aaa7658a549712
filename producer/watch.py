"""Follow a batch until it is done: one read of its counts per tick, a live rich bar.

The one loop that follows a batch, for `watch`, `submit --wait` (on Redis or over the HTTP API)
and the demo: it reads whatever has a `batch(batch_id)` (either SDK, or the status store). With
an `EventCounter`, the status event stream is read as well, to count the images of jobs that
succeeded while watching (an exact images/s even with num_images > 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.text import Text

from kandinsky_batch.schema import BatchStatus, JobState, JobStatus, is_finished
from kandinsky_batch.store.status import StatusStore


@dataclass
class WatchSummary:
    """The last view of a batch, with its throughput."""

    batch: BatchStatus
    elapsed_s: float | None  # the batch's wall time (created -> finished, or -> now)
    jobs_per_s: float | None  # finished jobs per second over `elapsed_s`
    images_per_s: float | None = None  # measured from the event stream while watching, if read
    images: int | None = None

    def as_dict(self) -> dict[str, Any]:
        b = self.batch
        return {
            "batch_id": b.batch_id,
            "total": b.total,
            "counts": {s.value: n for s, n in b.counts.items()},
            "done": b.done,
            "elapsed_s": _round(self.elapsed_s),
            "jobs_per_s": _round(self.jobs_per_s),
            "images": self.images,
            "images_per_s": _round(self.images_per_s),
            "manifest": b.manifest,
        }

    def line(self) -> str:
        b = self.batch
        counts = ", ".join(f"{s.value} {n}" for s, n in b.counts.items())
        text = f"batch {b.batch_id}: {b.total} jobs: {counts}"
        text += " (done)" if b.done else " (not done)"
        if self.elapsed_s is not None:
            text += f" in {self.elapsed_s:.1f} s"
        if self.jobs_per_s is not None:
            text += f", {self.jobs_per_s:.2f} jobs/s"
        if self.images_per_s is not None:
            text += f", {self.images_per_s:.2f} images/s"
        return text


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summarize(batch: BatchStatus, images: int | None = None, watched_s: float | None = None) -> WatchSummary:
    elapsed = None
    if batch.created_at is not None:
        elapsed = max(0.0, (batch.finished_at or time.time()) - batch.created_at)
    rate = batch.finished / elapsed if elapsed else None
    image_rate = images / watched_s if images is not None and watched_s else None
    return WatchSummary(batch, elapsed, rate, image_rate, images)


class EventCounter:
    """Counts images of this batch's jobs that succeed from now on, read from the event stream."""

    PAGE = 5000

    def __init__(self, status: StatusStore, batch_id: str) -> None:
        self.status = status
        self.prefix = f"{batch_id}-"
        self.images = 0
        self.last_id = status.last_event_id()

    def poll(self) -> int:
        """Read the new events; return the images counted so far."""
        while True:
            entries = self.status.events_after(self.last_id, self.PAGE)
            if not entries:
                return self.images
            self.last_id = entries[-1][0]
            jobs = [
                job
                for _, job, state in entries
                if state is JobState.SUCCEEDED and job.startswith(self.prefix)
            ]
            if jobs:
                self.images += sum(len(outputs) for outputs in self.status.outputs_of(jobs))
            if len(entries) < self.PAGE:
                return self.images


@dataclass
class _Rate:
    """Finished jobs per second since watching began (for the live bar and its ETA)."""

    started: float = field(default_factory=time.monotonic)
    first: int | None = None

    def eta(self, done: int, total: int) -> tuple[float | None, float | None]:
        if self.first is None:
            self.first = done
        elapsed = time.monotonic() - self.started
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        if rate <= 0:
            return None, None
        return rate, (total - done) / rate


class BatchSource(Protocol):
    """What a batch is followed from: either SDK (producer/sdk.py), or the status store itself."""

    def batch(self, batch_id: str) -> BatchStatus: ...


def watch(
    source: BatchSource,
    batch_id: str,
    *,
    console: Console | None = None,
    interval_s: float = 0.5,
    timeout_s: float | None = None,
    counter: EventCounter | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> WatchSummary:
    """Poll a batch until it is done; draw a live bar on `console` if given.

    Raises NotFound for an unknown batch and TimeoutError after `timeout_s`.
    """
    batch = source.batch(batch_id)
    started = time.monotonic()
    deadline = None if timeout_s is None else started + timeout_s
    rate = _Rate()
    progress = _progress(console) if console is not None else None
    task = progress.add_task(batch_id, total=batch.total, counts="", speed="") if progress else None
    try:
        if progress:
            progress.start()
        while True:
            done = batch.finished
            images = counter.poll() if counter else None
            if progress is not None and task is not None:
                jobs_s, eta = rate.eta(done, batch.total)
                watched = time.monotonic() - started
                speed = f"{jobs_s:.2f} jobs/s" if jobs_s else ""
                if images is not None and watched > 0:
                    speed = f"{images / watched:.2f} images/s"
                if eta is not None:
                    speed += f" ETA {_clock(eta)}"
                progress.update(task, total=batch.total, completed=done, counts=_counts(batch), speed=speed)
            if batch.done:
                return summarize(batch, images, time.monotonic() - started)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} not finished after {timeout_s} s")
            sleep(interval_s)
            batch = source.batch(batch_id)
    finally:
        if progress:
            progress.stop()


_STYLE = {
    JobState.QUEUED: "white",
    JobState.RUNNING: "cyan",
    JobState.SUCCEEDED: "green",
    JobState.FAILED: "red",
    JobState.CANCELED: "yellow",
}


def _counts(batch: BatchStatus) -> str:
    return " ".join(f"[{_STYLE[s]}]{s.value} {n}[/]" for s, n in batch.counts.items())


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class _BatchProgress(Progress):
    """The bar, done/total, rate, ETA and elapsed time on one line, the batch and its counts by
    state on the next: two lines, so an 80-column terminal shows them whole rather than "ETA…".
    The bar takes the width the text leaves; the counts wrap where they must, never cut."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            yield Text.assemble((task.description, "bold"), " ", Text.from_markup(task.fields["counts"]))


def _progress(console: Console) -> Progress:
    whole = Column(no_wrap=True)  # what the bar leaves room for is shown whole, never "…"
    return _BatchProgress(
        BarColumn(bar_width=None),
        MofNCompleteColumn(table_column=whole),
        TextColumn("{task.fields[speed]}", table_column=whole),
        TimeElapsedColumn(table_column=whole),
        console=console,
        refresh_per_second=4,
        expand=True,
    )


def poll_until_finished(
    read: Callable[[str], JobStatus | BatchStatus],
    id_: str,
    timeout: float | None,
    poll_s: float,
    on_update: Callable[[JobStatus | BatchStatus], None] | None = None,
) -> JobStatus | BatchStatus:
    """Read `id_` every `poll_s` until the job or the whole batch is finished (both SDKs' `wait`).

    TimeoutError after `timeout` seconds (None: no limit).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        current = read(id_)
        if on_update:
            on_update(current)
        if is_finished(current):
            return current
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{id_} not finished after {timeout} s")
        time.sleep(poll_s)
