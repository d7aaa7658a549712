"""Bulk submission: validate each line read (producer/lines.py), send chunks of compatible jobs.

One message carries up to `chunk_size` jobs of one mode; fields every job in the chunk shares
travel once. One store script records a chunk's jobs and pushes its message together, and
refuses a chunk with a job recorded before: so a repeated or interrupted submit of the same
batch sends only the jobs never sent, and never runs a finished job again.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from kandinsky_batch.enqueue import cap_reached, outgoing, seeded_wire
from kandinsky_batch.errors import InvalidSpec
from kandinsky_batch.keys import MAX_INDEX, is_index, job_id
from kandinsky_batch.schema import MAX_SEED, JobSpec, Mode, Priority
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.queues import Chunk, Created
from kandinsky_batch.store.records import by_shard
from kandinsky_batch.store.status import StatusStore
from kandinsky_batch.tenancy import KeyFor, check_inputs
from kandinsky_batch.wire import validate_spec
from producer.lines import LineError, line_of

PIPELINE_MESSAGES = 8  # messages sent per Redis round trip (fewer while a queue is near its high water)
MAX_SEEDS_PER_PROMPT = 10_000  # jobs one line may become (its seeds must fit below MAX_SEED)
MAX_LINE_ERRORS = 100  # bad lines reported one by one; the rest are counted


@dataclass
class SubmitResult:
    """What a submit did. Bad lines are counted; only the first MAX_LINE_ERRORS are kept, so a
    file of millions of bad lines costs a count, not a list of millions."""

    batch_id: str
    indices: list[int] = field(default_factory=list)  # left empty when the submitter keeps none
    sent: int = 0
    skipped: int = 0
    errors: list[LineError] = field(default_factory=list)  # the first MAX_LINE_ERRORS bad lines
    notes: list[str] = field(default_factory=list)  # said once about the whole file (ignored columns)
    jobs: int = 0  # jobs in the batch from this submit, whether their indices are kept or not
    error_count: int = 0  # bad lines, all of them

    @property
    def job_ids(self) -> list[str]:
        return [job_id(self.batch_id, i) for i in self.indices]

    def add_error(self, error: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_LINE_ERRORS:
            self.errors.append(error)


class Submitter:
    """Sends validated jobs for one batch in chunks, with backpressure on queue length."""

    def __init__(
        self,
        settings: Settings,
        status: StatusStore,
        batch_id: str,
        priority: Priority = Priority.NORMAL,
        tenant: str = "",
        cap: int = 0,
        webhook: str = "",
        key_for: KeyFor | None = None,
        keep_indices: bool = True,
    ) -> None:
        self.settings = settings
        self.status = status
        self.batch_id = batch_id
        self.priority = priority
        self.tenant = tenant  # recorded as the batch's owner (HTTP API submits)
        # A tenant's jobs may read only its own inputs (kandinsky_batch/tenancy.py): `key_for` is
        # the storage's, to tell which objects are its.
        self.key_for: KeyFor = key_for or (lambda _uri: None)
        self.keep_indices = keep_indices  # off: a count only, so an upload's memory stays bounded
        self.cap = cap  # the tenant's cap on unfinished jobs (0: none)
        self.webhook = webhook  # JSON of the batch's webhook ('' for none)
        self.result = SubmitResult(batch_id)
        self._pending: dict[Mode, list[tuple[int, dict[str, Any]]]] = {}
        self._outbox: list[tuple[Mode, list[tuple[int, dict[str, Any]]], Chunk]] = []
        self._lengths: dict[Mode, int] = {}  # each queue's length, as last seen
        # Seeds need to be fixed and varied, not secret: one OS draw, then a fast generator.
        self._seeds = random.Random(secrets.randbits(64))

    def add(self, index: int, spec: JobSpec) -> None:
        wire = seeded_wire(spec, self._seeds)
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
        self.result.jobs += len(chunk)
        if self.keep_indices:
            self.result.indices += [index for index, _ in chunk]
        for run in by_shard(chunk):
            self._send(mode, run)

    def _send(self, mode: Mode, jobs: list[tuple[int, dict[str, Any]]]) -> None:
        """Queue one message for the next pipeline, once its queue has room for it."""
        chunk = outgoing(
            self.settings, self.batch_id, mode, jobs, self.priority, self.tenant, self.cap, self.webhook
        )
        if mode not in self._lengths:
            self._lengths[mode] = self.status.queue_length(chunk.queue)
        while (
            self._lengths[mode] + sum(len(c.messages) for m, _, c in self._outbox if m is mode)
            >= self.settings.queue_high_water
        ):
            if self._outbox:
                self._drain()  # learn the lengths after what is in flight
            else:
                self._wait_for_room(mode, chunk.queue)
        self._outbox.append((mode, jobs, chunk))
        if len(self._outbox) >= PIPELINE_MESSAGES:
            self._drain()

    def _drain(self) -> None:
        """Send what is queued in one round trip; jobs recorded before are skipped, not sent twice.

        Chunks refused for the tenant's cap are dropped from the result, and OverQuota is raised
        once the round trip is accounted for.
        """
        refused: list[int] = []
        while self._outbox:
            outbox, self._outbox = self._outbox, []
            for (mode, jobs, _), pushed in zip(
                outbox, self.status.submit([chunk for _, _, chunk in outbox]), strict=True
            ):
                if pushed.over_cap is not None:
                    refused += [index for index, _ in jobs]
                    continue
                if pushed.sent:
                    self.result.sent += len(jobs)
                    self._lengths[mode] = pushed.queue_length
                    continue
                new = [job for job, flag in zip(jobs, pushed.created, strict=True) if flag is Created.NEW]
                self.result.skipped += len(jobs) - len(new)
                if new:
                    self._send(mode, new)
        if refused:
            gone = set(refused)
            self.result.jobs -= len(gone)
            self.result.indices = [i for i in self.result.indices if i not in gone]
            self._pending.clear()
            raise cap_reached(self.tenant, self.cap, refused)

    def _wait_for_room(self, mode: Mode, queue: str) -> None:
        """Pause while the mode's queue (every priority) is at the high-water mark."""
        while (length := self.status.queue_length(queue)) >= self.settings.queue_high_water:
            time.sleep(0.2)
        self._lengths[mode] = length


def submit_lines(
    submitter: Submitter,
    lines: Iterable[tuple[int, Any]],
    defaults: dict[str, Any],
    strict: bool = False,
    on_line: Callable[[int], None] | None = None,
    seeds_per_prompt: int = 1,
) -> SubmitResult:
    """Validate and send each line; a bad line is reported with its number, the rest still go.

    With `strict`, nothing is sent unless every line is valid (the file is read twice). With
    `seeds_per_prompt` K, line n becomes jobs (n - 1) * K .. (n - 1) * K + K - 1, one seed each
    (see `line_seeds`), so a resubmit finds the same jobs with the same seeds. For a CSV file n
    is the row's number (`RowNumber`), and its errors name its line.
    """
    count = seeds_per_prompt
    if not 1 <= count <= MAX_SEEDS_PER_PROMPT:
        raise ValueError(f"seeds_per_prompt must be 1 to {MAX_SEEDS_PER_PROMPT}, not {count}")
    result = submitter.result
    for number, item in lines:
        if on_line:
            on_line(number)
        if isinstance(item, LineError):
            result.add_error(item)
            continue
        first = (number - 1) * count
        if not is_index(first + count - 1):
            result.add_error(LineError(line_of(number), f"past the last job index of a batch ({MAX_INDEX})"))
            continue
        data = {**defaults, **item} if isinstance(item, dict) else item
        try:
            spec = validate_spec(data, submitter.settings)
            if submitter.tenant:
                check_inputs(spec, submitter.tenant, submitter.key_for)
            seeds = line_seeds(submitter.batch_id, number, spec, count) if count > 1 else None
        except InvalidSpec as exc:
            result.add_error(LineError(line_of(number), exc.message))
            continue
        if strict:
            continue
        if seeds is None:
            submitter.add(first, spec)  # a seed is drawn at send time, and the store keeps it
        else:
            for k, seed in enumerate(seeds):
                submitter.add(first + k, spec.model_copy(update={"seed": seed}))
    if strict:
        return result
    return submitter.close()


def line_seeds(batch_id: str, number: int, spec: JobSpec, count: int) -> range:
    """The seeds of a line's `count` jobs: from the line's seed, or one derived from the batch and line.

    Derived, not drawn, so a resumed submit gives the jobs it had not sent yet the seeds their
    line's first jobs already went with. Image i of a job uses seed + i, so the jobs step by
    `num_images`: no two images of a line share a seed.
    """
    span = count * spec.num_images
    if spec.seed is None:
        digest = hashlib.sha256(f"{batch_id}\0{number}".encode()).digest()
        base = int.from_bytes(digest[:8], "big") % (MAX_SEED + 2 - span)
    elif spec.seed + span - 1 > MAX_SEED:
        raise InvalidSpec(f"seed: {spec.seed} + {span} images passes the last seed ({MAX_SEED})")
    else:
        base = spec.seed
    return range(base, base + span, spec.num_images)
