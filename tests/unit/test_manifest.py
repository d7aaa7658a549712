"""The manifest line format (documented in docs/message-format.md), without Redis."""

from __future__ import annotations

import json

from kandinsky_batch.manifest import SPOOL_MAX_BYTES, encode_line, manifest_line, spooled_lines
from kandinsky_batch.schema import BatchStatus, JobError, JobState, JobStatus
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


def lines_of(n: int) -> list[dict[str, object]]:
    return [{"job_id": f"b-{i}", "index": i, "spec": {"prompt": f"Кошка {i} " * 10}} for i in range(n)]


def test_spooled_lines_hold_exactly_the_encoded_lines_rewound():
    lines = lines_of(50)

    with spooled_lines(iter(lines)) as fh:
        body = fh.read()

    assert body == "".join(encode_line(x) for x in lines).encode()
    assert fh.closed  # the temp file is gone once the block ends
    with spooled_lines([]) as empty:
        assert empty.read() == b""


def test_spooled_lines_move_to_disk_past_the_limit_and_keep_every_byte():
    lines = lines_of(300)
    expected = "".join(encode_line(x) for x in lines).encode()

    with spooled_lines(lines, max_size=len(expected)) as small:
        stayed_in_memory = not small._rolled  # SpooledTemporaryFile's flag: it moved to a real file
        assert small.read() == expected
    with spooled_lines(lines, max_size=len(expected) // 4) as big:
        went_to_disk = big._rolled
        assert big.read() == expected

    assert stayed_in_memory and went_to_disk
    assert 1024 * 1024 <= SPOOL_MAX_BYTES <= 16 * 1024 * 1024  # a few MB, not the whole manifest
