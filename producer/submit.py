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
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from pydantic import ValidationError

from producer.errors import InvalidSpec
from producer.keys import MESSAGE_VERSION, TASK_NAME, job_id
from producer.schema import JobSpec, Mode
from producer.settings import Settings
from producer.status import Created, StatusStore


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

    def __init__(self, settings: Settings, app: Celery, status: StatusStore, batch_id: str) -> None:
        self.settings = settings
        self.app = app
        self.status = status
        self.batch_id = batch_id
        self.result = SubmitResult(batch_id)
        self._pending: dict[Mode, list[tuple[int, JobSpec]]] = {}

    def add(self, index: int, spec: JobSpec) -> None:
        chunk = self._pending.setdefault(spec.mode, [])
        chunk.append((index, spec.with_seed()))
        if len(chunk) >= self.settings.chunk_size:
            self._flush(spec.mode)

    def close(self) -> SubmitResult:
        for mode in list(self._pending):
            self._flush(mode)
        return self.result

    def _flush(self, mode: Mode) -> None:
        chunk = self._pending.pop(mode, [])
        if not chunk:
            return
        created = self.status.create_jobs(self.batch_id, [(i, spec.seed or 0) for i, spec in chunk])
        to_send = []
        for (index, spec), (flag, seed) in zip(chunk, created, strict=True):
            self.result.indices.append(index)
            if flag is Created.SENT:
                self.result.skipped += 1
            else:
                to_send.append((index, spec.model_copy(update={"seed": seed})))
        if not to_send:
            return
        self._wait_for_room(mode)
        self.app.send_task(
            TASK_NAME,
            kwargs=build_message(self.batch_id, to_send),
            queue=self.settings.queue_for(mode),
            # Celery would otherwise copy the whole message as text into its headers.
            argsrepr="()",
            kwargsrepr=f"{{batch {self.batch_id}: {len(to_send)} jobs}}",
        )
        self.status.mark_sent(self.batch_id, [i for i, _ in to_send])
        self.result.sent += len(to_send)

    def _wait_for_room(self, mode: Mode) -> None:
        queue = self.settings.queue_for(mode)
        while self.status.redis.llen(queue) >= self.settings.queue_high_water:
            time.sleep(0.2)


def build_message(batch_id: str, jobs: list[tuple[int, JobSpec]]) -> dict[str, Any]:
    """The wire form: fields every job shares once in `shared`, the rest per job."""
    wires = [spec.wire() for _, spec in jobs]
    shared = dict(wires[0])
    for wire in wires[1:]:
        shared = {k: v for k, v in shared.items() if k in wire and wire[k] == v}
    return {
        "v": MESSAGE_VERSION,
        "batch_id": batch_id,
        "shared": shared,
        "jobs": [
            {"index": index, "spec": {k: v for k, v in wire.items() if k not in shared}}
            for (index, _), wire in zip(jobs, wires, strict=True)
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
