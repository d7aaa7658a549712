"""Bulk submission: read lines, validate each, and send chunks of compatible jobs.

One message carries up to `chunk_size` jobs of one mode; fields every job in the
chunk shares travel once. Jobs are recorded in Redis before their message is
sent and marked sent after, so a repeated or interrupted submit of the same
batch sends each job at most once more and never runs a finished job again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from producer.envelope import task_envelope
from producer.errors import InvalidSpec
from producer.keys import MESSAGE_VERSION, TASK_NAME, job_id, queue_lists
from producer.queue import kombu_priority
from producer.records import by_shard
from producer.schema import MAX_SEED, JobSpec, Mode, Priority
from producer.settings import Settings
from producer.status import Chunk, Created, StatusStore

PIPELINE_MESSAGES = 8  # messages sent per Redis round trip (fewer while a queue is near its high water)


@dataclass(frozen=True)
class LineError:
    line: int
    reason: str


@dataclass
class SubmitResult:
    batch_id: str
    indices: list[int] = field(default_factory=list)
    sent: int = 0
    skipped: int = 0
    errors: list[LineError] = field(default_factory=list)

    @property
    def job_ids(self) -> list[str]:
        return [job_id(self.batch_id, i) for i in self.indices]


def new_batch_id() -> str:
    return uuid.uuid4().hex[:16]


def batch_id_for_key(key: str) -> str:
    """A single job's batch id, derived from its idempotency key."""
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:19]


def batch_id_for_file(path: Path, defaults: dict[str, Any]) -> str:
    """The same file with the same defaults is the same batch, so resubmitting it runs nothing twice."""
    digest = hashlib.sha256(json.dumps(defaults, sort_keys=True).encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "f" + digest.hexdigest()[:19]


def format_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field, e.g. `height: must be a multiple of 64`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def validate_spec(data: Any, settings: Settings) -> JobSpec:
    """Validate one job against the contract and the operator's limits; raise InvalidSpec."""
    if not isinstance(data, dict):
        raise InvalidSpec(f"a job must be a JSON object, not {type(data).__name__}")
    try:
        return JobSpec.model_validate(data, context={"max_side": settings.max_side})
    except ValidationError as exc:
        raise InvalidSpec(format_validation_error(exc)) from None


def read_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield `(line number, parsed object or LineError)` for a JSONL or CSV file."""
    if path.suffix.lower() == ".csv":
        yield from _read_csv(path)
        return
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, LineError(number, f"not UTF-8 ({exc.reason} at byte {exc.start})")
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, LineError(number, f"malformed JSON: {exc.msg} at column {exc.colno}")


def _read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield 1, LineError(1, f"not UTF-8 ({exc.reason} at byte {exc.start})")
        return
    reader = csv.DictReader(io.StringIO(text))
    if "prompt" not in (reader.fieldnames or []):
        yield 1, LineError(1, "a CSV file needs a 'prompt' column")
        return
    for row in reader:
        yield reader.line_num, {k: v for k, v in row.items() if k and v not in (None, "")}


class Submitter:
    """Sends validated jobs for one batch in chunks, with backpressure on queue length."""

    def __init__(
        self, settings: Settings, status: StatusStore, batch_id: str, priority: Priority = Priority.NORMAL
    ) -> None:
        self.settings = settings
        self.status = status
        self.batch_id = batch_id
        self.priority = priority
        self.result = SubmitResult(batch_id)
        self._pending: dict[Mode, list[tuple[int, dict[str, Any]]]] = {}
        self._outbox: list[tuple[Mode, list[tuple[int, dict[str, Any]]], Chunk]] = []
        self._lengths: dict[Mode, int] = {}  # each queue's length, as last seen
        # Seeds need to be fixed and varied, not secret: one OS draw, then a fast generator.
        self._seeds = random.Random(secrets.randbits(64))

    def add(self, index: int, spec: JobSpec) -> None:
        wire = spec.wire()
        # Fixed now if the caller gave none, so the job is reproducible.
        wire.setdefault("seed", self._seeds.randint(0, MAX_SEED))
        chunk = self._pending.setdefault(spec.mode, [])
        chunk.append((index, wire))
        if len(chunk) >= self.settings.chunk_size:
            self._flush(spec.mode)

    def close(self) -> SubmitResult:
        for mode in list(self._pending):
            self._flush(mode)
        self._drain()
        return self.result

    def _flush(self, mode: Mode) -> None:
        chunk = self._pending.pop(mode, [])
        self.result.indices += [index for index, _ in chunk]
        for run in by_shard(chunk):
            self._send(mode, run)

    def _send(self, mode: Mode, jobs: list[tuple[int, dict[str, Any]]]) -> None:
        """Queue one message for the next pipeline, once its queue has room for it."""
        queue = self.settings.queue_for(mode)
        lists = queue_lists(queue)
        if mode not in self._lengths:
            self._lengths[mode] = queue_length(self.status.redis, lists)
        while (
            self._lengths[mode] + sum(m is mode for m, _, _ in self._outbox) >= self.settings.queue_high_water
        ):
            if self._outbox:
                self._drain()  # learn the lengths after what is in flight
            else:
                self._wait_for_room(mode, lists)
        envelope = task_envelope(
            TASK_NAME,
            message_from_wires(self.batch_id, jobs),
            queue,
            kombu_priority(self.priority),
            kwargsrepr=f"{{batch {self.batch_id}: {len(jobs)} jobs}}",
        )
        seeds = [(index, wire["seed"]) for index, wire in jobs]
        # The script pushes onto the first list and sums the lengths of all of them.
        ordered = lists[::-1] if self.priority is Priority.LOW else lists
        chunk = Chunk(self.batch_id, seeds, self.priority, envelope, ordered)
        self._outbox.append((mode, jobs, chunk))
        if len(self._outbox) >= PIPELINE_MESSAGES:
            self._drain()

    def _drain(self) -> None:
        """Send what is queued in one round trip; jobs recorded before are skipped, not sent twice."""
        while self._outbox:
            outbox, self._outbox = self._outbox, []
            for (mode, jobs, _), pushed in zip(
                outbox, self.status.submit([chunk for _, _, chunk in outbox]), strict=True
            ):
                if pushed.sent:
                    self.result.sent += len(jobs)
                    self._lengths[mode] = pushed.queue_length
                    continue
                new = [job for job, flag in zip(jobs, pushed.created, strict=True) if flag is Created.NEW]
                self.result.skipped += len(jobs) - len(new)
                if new:
                    self._send(mode, new)

    def _wait_for_room(self, mode: Mode, lists: list[str]) -> None:
        """Pause while the mode's queue (both priority lists) is at the high-water mark."""
        while (length := queue_length(self.status.redis, lists)) >= self.settings.queue_high_water:
            time.sleep(0.2)
        self._lengths[mode] = length


def queue_length(client: Any, lists: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for name in lists:
        pipe.llen(name)
    return sum(pipe.execute())


def build_message(batch_id: str, jobs: list[tuple[int, JobSpec]]) -> dict[str, Any]:
    """The wire form of `(index, spec)` jobs (see message_from_wires)."""
    return message_from_wires(batch_id, [(index, spec.wire()) for index, spec in jobs])


def message_from_wires(batch_id: str, jobs: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The wire form: fields every job shares once in `shared`, the rest per job."""
    wires = [wire for _, wire in jobs]
    shared = dict(wires[0])
    for wire in wires[1:]:
        shared = {k: v for k, v in shared.items() if k in wire and wire[k] == v}
    return {
        "v": MESSAGE_VERSION,
        "batch_id": batch_id,
        "shared": shared,
        "jobs": [
            {"index": index, "spec": {k: v for k, v in wire.items() if k not in shared}}
            for index, wire in jobs
        ],
    }


def submit_lines(
    submitter: Submitter,
    lines: Iterable[tuple[int, Any]],
    defaults: dict[str, Any],
    strict: bool = False,
    on_line: Callable[[int], None] | None = None,
) -> SubmitResult:
    """Validate and send each line; a bad line is reported with its number, the rest still go.

    With `strict`, nothing is sent unless every line is valid (the file is read twice).
    """
    result = submitter.result
    for number, item in lines:
        if on_line:
            on_line(number)
        if isinstance(item, LineError):
            result.errors.append(item)
            continue
        data = {**defaults, **item} if isinstance(item, dict) else item
        try:
            spec = validate_spec(data, submitter.settings)
        except InvalidSpec as exc:
            result.errors.append(LineError(number, exc.message))
            continue
        if not strict:
            submitter.add(number - 1, spec)
    if strict:
        return result
    return submitter.close()
