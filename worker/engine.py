"""Run claimed jobs: group compatible ones into micro-batches, generate, hand them to storing.

A plain object with its collaborators passed in (pipelines, storage, status, and in a worker its
leases, stop deadline and where handed-back jobs go), so it is tested without Celery. Permanent
errors fail one job; a storage outage hands the jobs still to do back to `queued` and to
`on_storage_failure`, the one way such jobs leave the engine (worker/storing.py). Each
micro-batch's generate call is timed, and each job stored with its images' share of that time
(kandinsky_batch/gpu_time.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import redis

from kandinsky_batch.errors import (
    BadInput,
    Canceled,
    ControlFlow,
    HandBack,
    InternalError,
    LeaseLost,
    PermanentError,
    StorageUnavailable,
)
from kandinsky_batch.gpu_time import US_PER_S, share
from kandinsky_batch.logs import log_fields
from kandinsky_batch.manifest import BatchDone
from kandinsky_batch.schema import JobState
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage
from kandinsky_batch.store.status import StatusStore
from worker import metrics
from worker.generate import Inputs, Item, compat_key, decoder_steps, generate
from worker.inputs import InputLoader
from worker.jobs import Job, JobLog
from worker.leases import Fence, LeaseStore
from worker.pipelines import PipelineCache
from worker.progress import StepCheck
from worker.shutdown import StopDeadline, never
from worker.splitting import Generate, Images, generate_splitting
from worker.store_pool import StorePool
from worker.storing import Finishing, Made, StorageFailure, Storer, left_queued

log = logging.getLogger(__name__)


def micro_batches(jobs: list[Job], max_images: int) -> Iterator[list[Job]]:
    """Compatible jobs together, each group cut into runs of at most `max_images` images."""
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(compat_key(job.spec), []).append(job)
    for group in groups.values():
        run: list[Job] = []
        images = 0
        for job in group:
            if run and images + job.spec.num_images > max_images:
                yield run
                run, images = [], 0
            run.append(job)
            images += job.spec.num_images
        if run:
            yield run


class Engine:
    def __init__(
        self,
        settings: Settings,
        cache: PipelineCache,
        storage: Storage,
        status: StatusStore,
        worker_name: str,
        generate_fn: Generate = generate,
        *,
        leases: LeaseStore | None = None,
        stop_deadline: StopDeadline = never,
        on_storage_failure: StorageFailure = left_queued,
        on_batch_done: BatchDone | None = None,
        store_pool: StorePool | None = None,
        job_log: JobLog | None = None,
    ) -> None:
        """With `leases`, every start, write and finish is fenced on holding the job's live lease
        (without, in tests of the engine alone, nothing is fenced). `stop_deadline` says when a
        stopping worker's grace ends; `on_storage_failure` takes the jobs a storage outage handed
        back; `on_batch_done` is told of each batch this engine's moves finished."""
        self.settings = settings
        self.cache = cache
        self.storage = storage
        self.status = status
        self.worker_name = worker_name
        self.generate_fn = generate_fn
        self.stop_deadline = stop_deadline
        self.on_storage_failure = on_storage_failure
        self.fence = Fence(leases, worker_name)
        self.log = job_log or JobLog()
        self.store_pool = store_pool or StorePool(settings.max_pending_images)
        self.inputs = InputLoader(settings, storage)
        self.storer = Storer(
            settings, cache, storage, status, self.fence, self.log, on_storage_failure, on_batch_done
        )

    def run(self, jobs: list[Job], wait: bool = True) -> None:
        """Run every job; on a storage outage hand the unfinished ones back (`on_storage_failure`).

        Each micro-batch is stored in the background while the next one generates; with `wait`
        this returns once all are stored, else storing goes on past the return (the worker's
        next task overlaps it; its heartbeat keeps those jobs' leases).
        When the worker is stopping, no new micro-batch starts and the one running
        stops at its grace deadline: HandBack lists the jobs to give back.
        """
        # A job whose worker died while running it (it may kill workers) runs alone, after the
        # others are stored (those of earlier tasks still storing in the background too), so it
        # never takes other jobs down with it again.
        suspects = {ref.id for ref in self.status.crashed([job.ref for job in jobs])}
        runs = list(
            micro_batches([j for j in jobs if j.job_id not in suspects], self.settings.max_batch_size)
        )
        runs += [[job] for job in jobs if job.job_id in suspects]
        for n, run in enumerate(runs):
            if n > 0 and self.stop_deadline() is not None:
                raise HandBack([job for later in runs[n:] for job in later])
            try:
                if run[0].job_id in suspects:
                    self.store_pool.wait()
                self.run_micro_batch(run)
            except HandBack as exc:
                raise HandBack([job for later in runs[n:] for job in later]) from exc
            except StorageUnavailable as exc:
                self._hand_back([job for later in runs[n:] for job in later], exc, wait)
                return
            except (ControlFlow, redis.RedisError):
                raise
            except Exception as exc:  # a bug for some parameter mix, a CUDA error that is not OOM, ...
                with log_fields(**self.log.batch_fields(run)):
                    log.exception("micro-batch %s failed unexpectedly", [job.job_id for job in run])
                for job in run:
                    self.storer.fail(job, InternalError(f"{type(exc).__name__}: {exc}"))
        if wait:
            self.store_pool.wait()

    def _hand_back(self, jobs: list[Job], exc: StorageUnavailable, wait: bool) -> None:
        """Storage went down before these jobs were stored: back to `queued`, then to be sent again."""
        pending = [job for job in jobs if not self.status.is_terminal(job.job_id)]
        for job in pending:
            self.status.requeue(job.ref, transient=True, fence=self.fence.name)
        if wait:
            self.store_pool.wait()
        self.on_storage_failure(pending, exc)

    def run_micro_batch(self, jobs: list[Job]) -> None:
        started: list[Job] = []
        skipped: list[tuple[Job, JobState | None]] = []
        outcomes = self.status.start_many(
            [(job.ref, decoder_steps(job.spec), job.spec.wire()) for job in jobs],
            self.worker_name,
            fence=bool(self.fence.name),
        )
        for job, (moved, before) in zip(jobs, outcomes, strict=True):
            if moved:
                started.append(job)
            else:
                skipped.append((job, before))
        created = self._read_started(jobs)
        for job, before in skipped:
            with log_fields(**self.log.job_fields(job)):
                log.info("skipping %s: it is %s", job.job_id, before.value if before else "unknown")
        claimed: list[tuple[Job, Inputs]] = []
        now = time.time()
        for job in started:
            at = created[job.job_id]
            if at is not None:
                metrics.QUEUE_WAIT.labels(job.spec.mode.value).observe(max(0.0, now - at))
            try:
                claimed.append((job, self.inputs.load(job.spec, job.tenant)))
            except PermanentError as exc:
                self.storer.fail(job, exc)
            except Exception as exc:  # whatever one job's inputs do, only that job fails
                with log_fields(**self.log.job_fields(job)):
                    log.exception("reading the inputs of %s failed unexpectedly", job.job_id)
                self.storer.fail(job, BadInput(f"its inputs could not be read ({type(exc).__name__})"))
        if not claimed:
            return
        running = [job for job, _ in claimed]
        inputs = {job.job_id: job_inputs for job, job_inputs in claimed}
        items = [
            Item(job.job_id, k, job.spec, inputs)
            for job, inputs in claimed
            for k in range(job.spec.num_images)
        ]
        progress = StepCheck(
            running, self.status, self.fence, self.stop_deadline, self.settings.progress_interval_s
        )
        with log_fields(**self.log.batch_fields(running)):
            generated = self._generate_micro_batch(running, items, progress)
        if generated is None:
            return
        images, timing, micro_batch_us = generated
        batch_info = {"size": len(items), "jobs": [job.job_id for job in running]}
        finishing: Finishing = []
        for job in running:
            if job.job_id in progress.lost:
                with log_fields(**self.log.job_fields(job)):
                    log.warning("not storing %s: this worker lost its lease", job.job_id)
                continue
            mine = [i for i, it in enumerate(items) if it.job_id == job.job_id]
            gpu = share(micro_batch_us, len(items), len(mine), self.settings.cost_per_gpu_hour)
            made = Made([], inputs[job.job_id], timing, batch_info, gpu=gpu)  # its images once decoded
            finishing.append((job, made, mine))
        if finishing:
            ids = [job.job_id for job, _, _ in finishing]
            prompts = [it.spec.prompt for it in items]
            self.store_pool.submit(ids, len(items), lambda: self.storer.store_all(finishing, images, prompts))

    def _read_started(self, jobs: list[Job]) -> dict[str, float | None]:
        """One round trip after the starts: each job's attempt (kept for logs) and created time."""
        read = self.status.created_and_attempts([job.ref for job in jobs])
        attempts = {job.job_id: n for job, (_, n) in zip(jobs, read, strict=True)}
        self.log.started(attempts, keep=self.store_pool.pending())
        return {job.job_id: created for job, (created, _) in zip(jobs, read, strict=True)}

    def _generate_micro_batch(
        self, jobs: list[Job], items: list[Item], progress: StepCheck
    ) -> tuple[Images, dict[str, float], int] | None:
        """The micro-batch's images, timing and generate call in micro-seconds (what its images'
        GPU shares divide), or None when it stopped (canceled, leases gone)."""
        metrics.MICRO_BATCH.observe(len(items))
        started = time.perf_counter()
        try:
            images = generate_splitting(self.generate_fn, self.cache, items, progress)
        except Canceled:
            log.info("micro-batch canceled: %s", [job.job_id for job in jobs])
            metrics.job_done(jobs[0].spec.mode.value, "canceled", n=len(jobs))
            return None
        except LeaseLost:
            # A cancel drops the job's lease too: those are canceled, not lost to another worker.
            states = self.status.states_of([job.ref for job in jobs])
            canceled = [job.job_id for job, s in zip(jobs, states, strict=True) if s is JobState.CANCELED]
            if canceled:
                log.info("micro-batch canceled: %s", canceled)
                metrics.job_done(jobs[0].spec.mode.value, "canceled", n=len(canceled))
            if len(canceled) < len(jobs):
                log.warning("micro-batch stopped, its leases are gone: %s", [job.job_id for job in jobs])
            return None
        elapsed = time.perf_counter() - started
        timing = {"generate_s": round(elapsed, 3)}
        log.info("generated %d images for %d jobs in %.2f s", len(items), len(jobs), timing["generate_s"])
        return images, timing, round(elapsed * US_PER_S)
