"""docs/message-format.md is held to the code: status is read here using only its tables.

Like a client in another language would, the test takes the key names, the record layout, the
flag values and the hash fields from the Markdown, then reads what the real store wrote.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest
import redis

from kandinsky_batch.broker import priority_from_kombu
from kandinsky_batch.keys import BatchField, JobField, JobRef, kombu_list, queue_list_of, queue_lists
from kandinsky_batch.schema import JobState, Mode, Priority
from kandinsky_batch.store import records
from kandinsky_batch.store.status import StatusStore
from producer.client import Client
from tests.helpers.tenants import drain, submit_as

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
        priority = "low" if flags & flag("low") else "high" if flags & flag("high") else "normal"
        return "queued", {"sd": str(seed), "ct": str(created), "pr": priority}
    return "not found", {}


def test_the_documented_tables_name_every_field_the_code_writes():
    assert set(JOB_FIELDS) == {f.value for f in JobField}
    assert {f.value for f in BatchField} <= set(BATCH_FIELDS)
    assert {s.value for s in JobState} <= set(BATCH_FIELDS)
    assert (flag("exists"), flag("received"), flag("low")) == (records.EXISTS, records.RECEIVED, records.LOW)
    assert flag("high") == records.HIGH
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
        client.redis.delete(*[queue_list_of(settings.queue_for(m), Priority.LOW) for m in settings.modes])


def rows_after(heading: str) -> list[list[str]]:
    """Every row of the first table below a heading, its header left out."""
    section = DOC[DOC.index(heading) :].split("\n|", 1)[1]
    rows = []
    for line in ("|" + section).splitlines():
        if not line.startswith("|"):
            break
        if not line.startswith("| ---"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows[1:]


def documented_list(code: str, queue: str) -> str:
    return code.replace("{queue}", queue).replace("\\x06\\x16", "\x06\x16")


def test_messages_wait_where_the_doc_says_and_kombu_files_each_priority_as_documented(settings):
    queue = settings.queue_for(Mode.TEXT2IMG)
    lists = codes(NAMES["Celery lists of a queue, in the order workers pop them"])[:4]
    assert [documented_list(c, queue) for c in lists] == queue_lists(queue)
    for values, (code,), priority in [
        (v, codes(lst), p) for v, lst, p in rows_after("## Priorities and the fair")
    ]:
        numbers = [0] if values == "none or 0" else [int(n) for n in re.findall(r"\d+", values)]
        for n in range(numbers[0], numbers[-1] + 1):
            assert kombu_list(queue, n) == documented_list(code, queue), n
            assert priority_from_kombu(n) is Priority(priority), n
    assert priority_from_kombu(None) is Priority.NORMAL
    with Client(settings) as client:
        r, prefix = client.redis, settings.key_prefix
        first, second = (submit_as(client, "acme", [{"prompt": p}], Priority.HIGH) for p in ("a", "b"))
        parts = {"queue": queue, "priority": "high"}
        # the first message went onto the Celery list of its priority, the second waits its turn
        assert r.llen(kombu_list(queue, 1)) == 1
        waiting = r.lrange(
            key("one tenant's waiting messages there (list)", prefix, **parts, tenant="acme"), 0, -1
        )
        [entry] = waiting
        images, _, envelope = entry.partition(b"\n")
        assert images == b"1" and json.loads(envelope)["headers"]["kb_tenant"] == "acme"
        tenants = key("tenants with messages of a queue waiting at a priority (sorted set)", prefix, **parts)
        assert r.zrange(tenants, 0, -1) == [b"acme"]
        state = key("that structure's state (hash)", prefix, **parts)
        assert r.hget(state, "@n") == b"1"
        assert (
            key("tenants' weights (hash: tenant to weight, 1 when absent)", prefix)
            == client.status_store.keys.weights()
        )
        assert [first[0], second[0]] == [j for message in drain(client.status_store, queue) for j in message]
