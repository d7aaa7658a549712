"""What the CLI prints fits a terminal: the live progress keeps its ETA and counts whole at 80
columns (rich's width when it cannot tell), and paths and URLs are never wrapped or cut."""

from __future__ import annotations

import io
import re
import time
from typing import Any

import pytest
from rich.console import Console

from kandinsky_batch.schema import BatchStatus, JobState, JobStatus
from producer.cli.base import console as cli_console
from producer.demo import _report
from producer.watch import watch

BATCH = "f0123456789abcdef012"  # as long as a file's batch id


class Ticking:
    """A status store whose batch finishes 10 of its 100 jobs per read."""

    def __init__(self) -> None:
        self.reads = 0

    def batch(self, batch_id: str) -> BatchStatus:
        self.reads += 1
        done = min(10 * self.reads, 100)
        running = 2 if done < 100 else 0
        counts = {
            JobState.QUEUED: 100 - done - running,
            JobState.RUNNING: running,
            JobState.SUCCEEDED: done,
            JobState.FAILED: 0,
            JobState.CANCELED: 0,
        }
        return BatchStatus(batch_id=batch_id, total=100, counts=counts, created_at=time.time() - 5)


@pytest.mark.parametrize("width", [60, 80])
def test_the_live_progress_shows_rate_eta_and_counts_whole(width: int):
    out = io.StringIO()
    watch(Ticking(), BATCH, console=Console(width=width, file=out), interval_s=0.01)  # type: ignore[arg-type]
    bar, *counts = out.getvalue().splitlines()  # not a terminal: the last view, printed once
    assert re.search(r" 100/100 \d+\.\d\d jobs/s ETA 0:00:00 \d:\d\d:\d\d$", bar), bar
    # The counts wrap between words where the width is short of them, never cut
    assert " ".join(counts) == f"{BATCH} queued 0 running 0 succeeded 100 failed 0 canceled 0"
    assert len(counts) == (1 if width == 80 else 2)
    assert "…" not in out.getvalue() and max(len(line) for line in (bar, *counts)) <= width


class Jobs:
    """The demo's client, as far as its report reads it."""

    def __init__(self, jobs: list[JobStatus]) -> None:
        self._jobs = jobs

    def jobs(self, batch_id: str) -> list[JobStatus]:
        return self._jobs


def test_the_demos_file_urls_are_printed_whole_on_one_line(tmp_path: Any):
    # Longer than any terminal, so no width the console may find leaves them unwrapped by luck
    folder = tmp_path / ("a-deep-output-folder-" * 8) / ("images-" * 20)
    urls = [(folder / f"{BATCH}-{i}" / "0.png").as_uri() for i in range(2)]
    jobs = [
        JobStatus(job_id=f"{BATCH}-{i}", batch_id=BATCH, state=JobState.SUCCEEDED, seed=i, outputs=[url])
        for i, url in enumerate(urls)
    ]
    with cli_console.capture() as captured:
        _report(Jobs(jobs), BATCH, cli_console)  # type: ignore[arg-type]
    lines = captured.get().splitlines()
    assert len(lines) == 2
    for line, url in zip(lines, urls, strict=True):
        assert line.endswith(f"  {url}"), line
