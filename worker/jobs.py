"""One job as the worker runs it (its id, its validated spec, its batch's tenant), and its log fields.

Its own module, without torch, so the modules that pass jobs around (messages, delivery,
gather, tasks) need not import the engine.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from kandinsky_batch.keys import JobRef
from kandinsky_batch.schema import JobSpec


@dataclass(frozen=True)
class Job:
    ref: JobRef
    spec: JobSpec
    tenant: str = ""  # its batch's tenant (submitted with an API key), '' for none

    @property
    def job_id(self) -> str:
        return self.ref.id

    @property
    def batch_id(self) -> str:
        return self.ref.batch_id

    @property
    def index(self) -> int:
        return self.ref.index


class JobLog:
    """The fields of a log line about jobs this worker runs: their ids, batch, mode and attempt.

    Each job's attempt is read once, after its micro-batch starts (`started`), and kept until it
    is stored (`forget`), so no log line costs a read. The worker's name is on every line already.
    """

    def __init__(self) -> None:
        self.attempts: dict[str, int] = {}

    def started(self, attempts: dict[str, int], keep: Collection[str]) -> None:
        """The attempts of a micro-batch's jobs; of those before, only the ones in `keep` stay."""
        kept = {job: n for job, n in self.attempts.items() if job in keep}
        self.attempts = {**kept, **attempts}

    def forget(self, job_id: str) -> None:
        self.attempts.pop(job_id, None)

    def job_fields(self, job: Job) -> dict[str, Any]:
        """The fields of a line about one job."""
        return {
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "mode": job.spec.mode.value,
            "attempt": self.attempts.get(job.job_id, 0),
        }

    def batch_fields(self, jobs: list[Job]) -> dict[str, Any]:
        """The fields of a line about a micro-batch: its jobs' ids and attempts, as lists."""
        if not jobs:
            return {}
        return {
            "job_id": [job.job_id for job in jobs],
            "batch_id": jobs[0].batch_id,
            "mode": jobs[0].spec.mode.value,
            "attempt": [self.attempts.get(job.job_id, 0) for job in jobs],
        }
