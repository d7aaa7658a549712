"""One job as the worker runs it: its id, its validated spec and its batch's tenant.

Its own module, without torch, so the modules that pass jobs around (messages, delivery,
gather, tasks) need not import the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

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
