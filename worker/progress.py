"""The per-step callback of a micro-batch: the grace deadline, the lease fence, cancels, progress.

It runs between denoising steps, so it is where a running micro-batch learns that it must stop:
the worker is shutting down past its grace period (HandBack), it lost every job's lease
(LeaseLost: another worker may run them now, so this one writes nothing), or every job was
canceled (Canceled). Progress writes are throttled to `interval_s`; the in-process
last-progress metric is set at every step. It is given only what it asks, as an activity is
given its heartbeat and cancel checks: the stop deadline, the fence and the status store.
"""

from __future__ import annotations

import time

from kandinsky_batch.errors import Canceled, HandBack, LeaseLost
from kandinsky_batch.schema import JobState
from kandinsky_batch.store.status import StatusStore
from worker import metrics
from worker.jobs import Job
from worker.leases import Fence
from worker.shutdown import StopDeadline


class StepCheck:
    def __init__(
        self,
        jobs: list[Job],
        status: StatusStore,
        fence: Fence,
        stop_deadline: StopDeadline,
        interval_s: float,
    ) -> None:
        self.jobs = jobs
        self.status = status
        self.fence = fence
        self.stop_deadline = stop_deadline
        self.interval_s = interval_s
        self.last = 0.0
        self.lost: set[str] = set()  # jobs whose lease this worker lost during the run

    def __call__(self, step: int, total: int) -> None:
        metrics.progressed()
        now = time.monotonic()
        deadline = self.stop_deadline()
        if deadline is not None and now > deadline:
            raise HandBack()
        ids = [job.job_id for job in self.jobs]
        held = self.fence.held(ids)
        self.lost |= set(ids) - held
        if not held:
            raise LeaseLost("every job of the micro-batch")
        if step < total and now - self.last < self.interval_s:
            return
        self.last = now
        states = self.status.states_of([job.ref for job in self.jobs])
        if all(s is JobState.CANCELED for s in states):
            raise Canceled()
        running = [
            job.ref
            for job, state in zip(self.jobs, states, strict=True)
            if state is JobState.RUNNING and job.job_id in held
        ]
        self.status.progress_many(running, step, total)
