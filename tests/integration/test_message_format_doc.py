"""docs/message-format.md is held to the code: status is read here using only its tables.

Like a client in another language would, the test takes the key names, the record layout, the
flag values and the hash fields from the Markdown, then reads what the real store wrote.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
import redis

from kandinsky_batch.keys import BatchField, JobField, JobRef
from kandinsky_batch.schema import JobState, Priority
from kandinsky_batch.store import records
from kandinsky_batch.store.status import StatusStore
from producer.client import Client

pytestmark = pytest.mark.integration

DOC = (Path(__file__).resolve().parents[2] / "docs" / "message-format.md").read_text()


def table_after(heading: str) -> dict[str, str]:
    """The first column -> second column of the first table below a heading."""
    section = DOC[DOC.index(heading) :]
    rows: dict[str, str] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1]
    return dict(list(rows.items())[1:])  # without the header row


def codes(cell: str) -> list[str]:
    """The backquoted names in a table cell: "`ps`, `pt`" -> ["ps", "pt"]."""
    return re.findall(r"`([^`]+)`", cell)


JOB_FIELDS = {code: meaning for cell, meaning in table_after("### Job:").items() for code in codes(cell)}
BATCH_FIELDS = {code: meaning for cell, meaning in table_after("### Batch:").items() for code in codes(cell)}
RECORD = table_after("### Queued job records")
FLAG_TEXT = {int(value): text.strip() for value, text in re.findall(r"(\d+) = ([^,(]+)", RECORD["0"])}


def flag(word: str) -> int:
    """The flag whose documented meaning says `word`."""
    [value] = [v for v, text in FLAG_TEXT.items() if word in text]
    return value


SHARD_JOBS = int(re.search(r"index // (\d+)", DOC).group(1))  # type: ignore[union-attr]
RECORD_BYTES = int(re.search(r"`\(index % \d+\) \* (\d+)`", DOC).group(1))  # type: ignore[union-attr]
NAMES = table_after("## Names")


def key(name: str, key_prefix: str, **parts: object) -> str:
    """A key from the Names table, e.g. `{key_prefix}:job:{job_id}` (the shard part is `{index // N}`)."""
    text = codes(NAMES[name])[0].replace("{key_prefix}", key_prefix)
    text = re.sub(r"\{index // \d+\}", "{shard}", text)
    for part, value in parts.items():
        text = text.replace("{" + part + "}", str(value))
    return text


def read_as_documented(
    r: redis.Redis, key_prefix: str, batch_id: str, index: int
) -> tuple[str, dict[str, str]]:
    """A job's state and hash, by the doc's rules alone: the hash if there is one, else the record."""
    job = f"{batch_id}-{index}"
    fields = {
        k.decode(): v.decode() for k, v in r.hgetall(key("job status hash", key_prefix, job_id=job)).items()
    }
    if fields:
        return fields["st"], fields
    shard_key = key(
        "records of jobs no worker has received yet", key_prefix, batch_id=batch_id, shard=index // SHARD_JOBS
    )
    start = (index % SHARD_JOBS) * RECORD_BYTES
    raw = r.getrange(shard_key, start, start + RECORD_BYTES - 1)
    if len(raw) < RECORD_BYTES:
        return "not found", {}
    flags, seed, created = struct.unpack(">BII", raw)
    if flags & flag("exists") and not flags & flag("received"):
        low = bool(flags & flag("low"))
        return "queued", {"sd": str(seed), "ct": str(created), "pr": "low" if low else "normal"}
    return "not found", {}


def test_the_documented_tables_name_every_field_the_code_writes():
    assert set(JOB_FIELDS) == {f.value for f in JobField}
    assert {f.value for f in BatchField} <= set(BATCH_FIELDS)
    assert {s.value for s in JobState} <= set(BATCH_FIELDS)
    assert (flag("exists"), flag("received"), flag("low")) == (records.EXISTS, records.RECEIVED, records.LOW)
    assert (SHARD_JOBS, RECORD_BYTES) == (records.SHARD_JOBS, records.RECORD_BYTES)


def test_a_client_following_the_doc_reads_queued_received_and_expired_jobs(settings):
    with Client(settings) as client:
        r, prefix = client.redis, settings.key_prefix
        # Given a low-priority batch that no worker has taken: jobs are records only
        result = client.submit_batch(
            [{"prompt": f"doc {i}", "seed": 10 + i} for i in range(3)], priority=Priority.LOW
        )
        batch = result.batch_id
        state, fields = read_as_documented(r, prefix, batch, 1)
        assert (state, fields["sd"], fields["pr"]) == ("queued", "11", "low")
        assert read_as_documented(r, prefix, batch, 7) == ("not found", {})
        # When a worker receives one and runs it to the end, the hash holds its state
        store: StatusStore = client.status_store
        store.receive(batch, [(0, 10)], Priority.LOW)
        ref = JobRef(batch, 0)
        store.start(ref, "doc-worker", 2, {"prompt": "doc 0", "seed": 10})
        store.succeed(ref, ["file:///x/0.png"], "file:///x.json")
        state, fields = read_as_documented(r, prefix, batch, 0)
        assert state == "succeeded" and fields["o"] == '["file:///x/0.png"]' and fields["w"] == "doc-worker"
        assert fields["a"] == "1" and fields["sd"] == "10"
        # And once its hash expires, the doc's rule reads it as not found (never as queued)
        r.delete(key("job status hash", prefix, job_id=ref.id))
        assert read_as_documented(r, prefix, batch, 0) == ("not found", {})
        # The batch hash's counters add up to its total, as documented
        batch_hash = {
            k.decode(): int(v)
            for k, v in r.hgetall(key("batch status hash", prefix, batch_id=batch)).items()
            if k.decode() in BATCH_FIELDS and v.isdigit()
        }
        assert batch_hash["total"] == 3 and batch_hash["queued"] == 2 and batch_hash["succeeded"] == 1
        assert sum(batch_hash.get(s.value, 0) for s in JobState) == batch_hash["total"]
        client.redis.delete(*[f"{settings.queue_for(m)}:9" for m in settings.modes])
