"""The manifest line format (documented in docs/message-format.md), without Redis."""

from __future__ import annotations

import json

from producer.manifest import encode_line, manifest_line
from producer.schema import BatchStatus, JobError, JobState, JobStatus
from producer.watch import WatchSummary, summarize


def test_a_manifest_line_has_the_documented_fields_on_one_utf8_line():
    job = JobStatus(
        job_id="b1-7",
        batch_id="b1",
        state=JobState.FAILED,
        attempts=2,
        seed=42,
        error=JobError(code="bad_input", message="image: cannot read"),
        spec={"prompt": "Кошка", "seed": 42},
    )
    line = manifest_line(job)
    assert set(line) == {
        "job_id", "index", "state", "seed", "outputs", "metadata", "error", "spec", "attempts",
        "worker", "created_at", "started_at", "finished_at",
    }  # fmt: skip
    assert line["index"] == 7 and line["state"] == "failed" and line["outputs"] == []
    assert line["error"] == {"code": "bad_input", "message": "image: cannot read"}
    text = encode_line(line)
    assert text.endswith("\n") and text.count("\n") == 1 and "Кошка" in text
    assert json.loads(text) == line


def test_a_finished_batch_summary_gives_its_rate_and_one_line():
    batch = BatchStatus(
        batch_id="b2",
        total=4,
        counts={s: 0 for s in JobState} | {JobState.SUCCEEDED: 3, JobState.FAILED: 1},
        created_at=100.0,
        finished_at=102.0,
    )
    summary: WatchSummary = summarize(batch)
    assert summary.elapsed_s == 2.0 and summary.jobs_per_s == 2.0
    assert summary.line() == (
        "batch b2: 4 jobs: queued 0, running 0, succeeded 3, failed 1, canceled 0 (done) in 2.0 s, 2.00 jobs/s"
    )
    assert summary.as_dict()["counts"]["failed"] == 1 and summary.as_dict()["done"] is True
