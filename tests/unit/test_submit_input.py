"""Reading batch files and building messages: bad lines are reported with their numbers."""

from __future__ import annotations

import json
from pathlib import Path

from kandinsky_batch.keys import MESSAGE_VERSION, JobRef, job_id
from kandinsky_batch.schema import JobSpec
from kandinsky_batch.wire import build_message
from producer.lines import LineError, read_lines


def test_bad_lines_are_reported_with_their_numbers(tmp_path: Path):
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(
        b'{"prompt": "ok"}\n\n{"prompt": "broken"\n{"prompt": "\xff\xfe"}\n["not", "an", "object"]\n'
    )
    items = list(read_lines(path))
    assert [n for n, _ in items] == [1, 3, 4, 5]
    assert items[0][1] == {"prompt": "ok"}
    assert isinstance(items[1][1], LineError) and "malformed JSON" in items[1][1].reason
    assert isinstance(items[2][1], LineError) and "not UTF-8" in items[2][1].reason
    assert items[3][1] == ["not", "an", "object"]


def test_csv_needs_a_prompt_column(tmp_path: Path):
    good = tmp_path / "good.csv"
    good.write_text("prompt,seed\na cat,4\n")
    assert list(read_lines(good)) == [(1, {"prompt": "a cat", "seed": "4"})]  # row 1 is job 0
    bad = tmp_path / "bad.csv"
    bad.write_text("text\na cat\n")
    [(line, err)] = list(read_lines(bad))
    assert line == 1
    assert isinstance(err, LineError) and "prompt" in err.reason


def test_message_carries_shared_fields_once():
    jobs = [(i, JobSpec(prompt=f"p{i}", height=64, width=64, seed=i)) for i in range(3)]
    msg = build_message("b1", jobs)
    assert msg["v"] == MESSAGE_VERSION
    assert msg["shared"] == {"height": 64, "width": 64}
    assert msg["jobs"][2] == {"index": 2, "spec": {"prompt": "p2", "seed": 2}}
    json.dumps(msg)  # JSON only on the wire


def test_job_ids_carry_their_batch():
    assert JobRef.parse(job_id("abc-def", 12)) == JobRef("abc-def", 12)
    assert JobRef.parse("nodash") is None
    assert JobRef.parse("b-x") is None
