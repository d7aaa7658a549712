"""Packed per-job records: the status of jobs that no worker has received yet, 9 bytes each.

A queued job costs a Redis hash of ~150 bytes; a dataset of millions of queued
prompts would spend more on that than on its messages. So until a worker
receives a job, its status lives in a record inside a string per batch shard
(`SHARD_JOBS` jobs, read and written by the Lua scripts in kandinsky_batch/store/lua/):
flags, seed, and the time it was created. The producer writes a chunk's records
and pushes its message in one script, so a job is recorded if and only if its
message was sent. A worker's receive (or a transition such as cancel) turns the
record into the job's hash and sets RECEIVED; from then on the hash is the
truth, and the record only says the job existed (so an expired job is "not
found", never "queued", and a resubmit does not create it again).

Layout of record `index % SHARD_JOBS` (big-endian, as BITFIELD reads it):
byte 0 flags, bytes 1-4 seed (u32), bytes 5-8 created (u32, unix seconds).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import TypeVar

from kandinsky_batch.schema import Priority

T = TypeVar("T")

SHARD_JOBS = 1 << 16  # jobs per record string: a stray index allocates at most 576 KiB
RECORD_BYTES = 9

EXISTS = 1  # the job exists (a bad line's index has no record)
RECEIVED = 2  # a worker or a transition made its hash; the hash holds its state now
LOW = 4  # submitted at low priority
COUNTED = 8  # counted off its queue list: a message carrying it was popped (queue_jobs metrics)
HIGH = 16  # submitted at high priority


def shard_of(index: int) -> int:
    return index // SHARD_JOBS


def by_shard(jobs: Iterable[tuple[int, T]]) -> Iterator[list[tuple[int, T]]]:
    """`(index, ...)` jobs sorted by index, in runs whose records share one shard (one script call each)."""
    run: list[tuple[int, T]] = []
    for job in sorted(jobs, key=itemgetter(0)):
        if run and shard_of(job[0]) != shard_of(run[0][0]):
            yield run
            run = []
        run.append(job)
    if run:
        yield run


def byte_offset(index: int) -> int:
    """Where the record of `index` starts inside its shard's string."""
    return (index % SHARD_JOBS) * RECORD_BYTES


@dataclass(frozen=True)
class Record:
    flags: int
    seed: int
    created: int

    @property
    def unreceived(self) -> bool:
        """A queued job whose state is only this record."""
        return not self.flags & RECEIVED


def submitted_flags(priority: Priority) -> int:
    """The flags a submit writes: the job exists, at its priority."""
    return EXISTS | {Priority.HIGH: HIGH, Priority.LOW: LOW}.get(priority, 0)


def priority_of(flags: int) -> Priority:
    """The priority a record's flags say its job was submitted at."""
    return Priority.LOW if flags & LOW else Priority.HIGH if flags & HIGH else Priority.NORMAL


def submitted(priority: Priority, seed: int, created: int) -> Record:
    """The record a submit writes for a job (what reads show until a worker receives it)."""
    return Record(submitted_flags(priority), seed, created)


def decode(data: bytes, at: int = 0) -> Record | None:
    """The record starting at byte `at` of `data` (a GETRANGE reply); None where there is no job."""
    if len(data) < at + RECORD_BYTES or not data[at] & EXISTS:
        return None
    return Record(*_unpack(data, at))


_unpack = struct.Struct(">BII").unpack_from  # flags, seed, created


def decode_all(data: bytes, first_index: int) -> list[tuple[int, Record]]:
    """`(index, record)` for every job in a shard's string whose first record is `first_index`."""
    indexed = ((first_index + n, decode(data, n * RECORD_BYTES)) for n in range(len(data) // RECORD_BYTES))
    return [(index, record) for index, record in indexed if record is not None]
