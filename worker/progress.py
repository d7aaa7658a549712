"""The per-step callback of a micro-batch: the grace deadline, the lease fence, cancels, progress.

It runs between denoising steps, so it is where a running micro-batch learns that it must stop:
the worker is shutting down past its grace period (HandBack), it lost every job's lease
(LeaseLost: another worker may run them now, so this one writes nothing), or every job was
canceled (Canceled). Progress writes are throttled to `progress_interval_s`; the in-process
last-progress metric is set at every step.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kandinsky_batch.errors import Canceled, HandBack, LeaseLost
from kandinsky_batch.schema import JobState
from worker import metrics

if TYPE_CHECKING:
    from worker.engine import Engine
    from worker.jobs import Job


class StepCheck:
    def __init__(self, engine: Engine, jobs: list[Job]) -> None:
        self.engine = engine
        self.jobs = jobs
        self.last = 0.0
        self.lost: set[str] = set()  # jobs whose lease this worker lost during the run

    def __call__(self, step: int, total: int) -> None:
        metrics.progressed()
        now = time.monotonic()
        deadline = self.engine.stop_deadline()
        if deadline is not None and now > deadline:
            raise HandBack()
        held = self.engine.held(self.jobs)
        self.lost |= {job.job_id for job in self.jobs} - held
        if not held:
            raise LeaseLost("every job of the micro-batch")
        if step < total and now - self.last < self.engine.settings.progress_interval_s:
            return
        self.last = now
        status = self.engine.status
        states = status.states_of([job.ref for job in self.jobs])
        if all(s is JobState.CANCELED for s in states):
            raise Canceled()
        running = [
            job.ref
            for job, state in zip(self.jobs, states, strict=True)
            if state is JobState.RUNNING and job.job_id in held
        ]
        status.progress_many(running, step, total)
