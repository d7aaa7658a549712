"""Run claimed jobs: group compatible ones into micro-batches, generate, store, record.

A plain object with its collaborators passed in (pipelines, storage, status),
so it is tested without Celery. Permanent errors fail one job; a storage outage
hands the jobs still to do back to `queued` and raises RetryLater with them, for the task to
send again after a backoff.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from importlib import metadata as importlib_metadata
from typing import Any

import redis
import torch
from PIL import Image

from kandinsky_batch.errors import (
    BadInput,
    Canceled,
    ControlFlow,
    HandBack,
    InternalError,
    KandinskyBatchError,
    LeaseLost,
    PermanentError,
    RetryLater,
    StorageUnavailable,
    compute_backoff,
)
from kandinsky_batch.keys import JobField
from kandinsky_batch.logs import log_fields
from kandinsky_batch.schema import JobState
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage, image_key, metadata_key
from kandinsky_batch.store.status import StatusStore
from worker import metrics
from worker.clip import job_score, score_micro_batch
from worker.generate import Inputs, Item, Latent, compat_key, decoded, decoder_steps, generate
from worker.inputs import InputLoader
from worker.jobs import Job
from worker.leases import LeaseStore
from worker.outputs import encode_image, extension
from worker.pipelines import PipelineCache
from worker.progress import StepCheck
from worker.splitting import Generate, Images, generate_splitting
from worker.store_pool import StorePool
from worker.stored_inputs import StoredInputs, spec_with_refs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Made:
    """What a micro-batch made for one job: its images (or their errors), inputs, timing, scores."""

    images: list[Image.Image | KandinskyBatchError]
    inputs: Inputs
    timing: dict[str, float]
    batch: dict[str, Any]
    clip_score: float | list[float | None] | None = None


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
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.storage = storage
        self.status = status
        self.worker_name = worker_name
        self.generate_fn = generate_fn
        self.inputs = InputLoader(settings, storage)
        self.stored_inputs = StoredInputs()
        self.store_pool = StorePool(settings.max_pending_images)
        # Where jobs handed back by a storage outage go: the worker re-sends them after a backoff
        # (worker/delivery.retry_later); alone, the engine raises them as RetryLater from `run`.
        self.on_storage_failure: Callable[[list[Job], StorageUnavailable], None] = self._collect
        self._handed_back: list[Job] = []
        self._handed_back_cause: StorageUnavailable | None = None
        self.sleep: Callable[[float], None] = time.sleep
        # Set when the worker is told to stop: (monotonic) time its grace period ends.
        self.stop_deadline: Callable[[], float | None] = lambda: None
        # The worker's leases: with them, every start, write and finish is fenced on holding the
        # job's live lease. Without (tests of the engine alone) nothing is fenced.
        self.leases: LeaseStore | None = None
        # Attempt of each job of the micro-batch in progress (read once after its starts), for logs.
        self.attempts: dict[str, int] = {}

    @property
    def fence(self) -> str:
        """The worker name the store's fenced transitions check, or '' when not fenced."""
        return self.worker_name if self.leases is not None else ""

    def held(self, jobs: list[Job]) -> set[str]:
        """Ids of the jobs whose live lease this worker holds (all of them when not fenced)."""
        if self.leases is None:
            return {job.job_id for job in jobs}
        return self.leases.held(self.worker_name, [job.job_id for job in jobs])

    def run(self, jobs: list[Job], wait: bool = True) -> None:
        """Run every job; on a storage outage hand the unfinished ones back and raise RetryLater.

        Each micro-batch is stored in the background while the next one generates; with `wait`
        this returns once all are stored, else storing goes on past the return (the worker's
        next task overlaps it; its heartbeat keeps those jobs' leases).
        When the worker is stopping, no new micro-batch starts and the one running
        stops at its grace deadline: HandBack lists the jobs to give back.
        """
        # A job whose worker died while running it (it may kill workers) runs alone, after the
        # others are stored (those of earlier tasks still storing in the background too), so it
        # never takes other jobs down with it again.
        suspects = self.crashed(jobs)
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
                pending = [
                    job for later in runs[n:] for job in later if not self.status.is_terminal(job.job_id)
                ]
                for job in pending:
                    self.status.requeue(job.ref, transient=True, fence=self.fence)
                if wait:
                    self.store_pool.wait()
                raise RetryLater(self._take_collected() + pending, exc) from exc
            except (ControlFlow, redis.RedisError):
                raise
            except Exception as exc:  # a bug for some parameter mix, a CUDA error that is not OOM, ...
                with log_fields(**self.batch_fields(run)):
                    log.exception("micro-batch %s failed unexpectedly", [job.job_id for job in run])
                for job in run:
                    self.fail(job, InternalError(f"{type(exc).__name__}: {exc}"))
        if wait:
            self.store_pool.wait()
            self._raise_collected()

    def _collect(self, jobs: list[Job], exc: StorageUnavailable) -> None:
        """Without a worker around the engine: jobs handed back by storage, raised at the end of `run`."""
        self._handed_back += jobs
        self._handed_back_cause = exc

    def _take_collected(self) -> list[Job]:
        jobs, self._handed_back = self._handed_back, []
        return jobs

    def _raise_collected(self) -> None:
        jobs = self._take_collected()
        if jobs and self._handed_back_cause is not None:
            raise RetryLater(jobs, self._handed_back_cause)

    def crashed(self, jobs: list[Job]) -> frozenset[str]:
        """Ids of the jobs whose worker died while running them before (one round trip)."""
        pipe = self.status.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.hget(self.status.keys.job(job.ref), JobField.CRASHES)
        return frozenset(job.job_id for job, n in zip(jobs, pipe.execute(), strict=True) if n and int(n) > 0)

    def job_fields(self, job: Job) -> dict[str, Any]:
        """The fields of a log line about one job (the worker's name is on every line already)."""
        attempt = self.attempts.get(job.job_id, 0)
        return {
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "mode": job.spec.mode.value,
            "attempt": attempt,
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

    def run_micro_batch(self, jobs: list[Job]) -> None:
        started: list[Job] = []
        skipped: list[tuple[Job, JobState | None]] = []
        outcomes = self.status.start_many(
            [(job.ref, decoder_steps(job.spec), job.spec.wire()) for job in jobs],
            self.worker_name,
            fence=bool(self.fence),
        )
        for job, (moved, before) in zip(jobs, outcomes, strict=True):
            if moved:
                started.append(job)
            else:
                skipped.append((job, before))
        created = self._read_started(jobs)
        for job, before in skipped:
            with log_fields(**self.job_fields(job)):
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
                self.fail(job, exc)
            except Exception as exc:  # whatever one job's inputs do, only that job fails
                with log_fields(**self.job_fields(job)):
                    log.exception("reading the inputs of %s failed unexpectedly", job.job_id)
                self.fail(job, BadInput(f"its inputs could not be read ({type(exc).__name__})"))
        if not claimed:
            return
        running = [job for job, _ in claimed]
        inputs = {job.job_id: job_inputs for job, job_inputs in claimed}
        items = [
            Item(job.job_id, k, job.spec, inputs)
            for job, inputs in claimed
            for k in range(job.spec.num_images)
        ]
        progress = StepCheck(self, running)
        with log_fields(**self.batch_fields(running)):
            generated = self._generate_micro_batch(running, items, progress)
        if generated is None:
            return
        images, timing = generated
        batch_info = {"size": len(items), "jobs": [job.job_id for job in running]}
        finishing: list[tuple[Job, Made, list[int]]] = []
        for job in running:
            if job.job_id in progress.lost:
                with log_fields(**self.job_fields(job)):
                    log.warning("not storing %s: this worker lost its lease", job.job_id)
                continue
            mine = [i for i, it in enumerate(items) if it.job_id == job.job_id]
            made = Made([], inputs[job.job_id], timing, batch_info)  # its images once decoded
            finishing.append((job, made, mine))
        if finishing:
            ids = [job.job_id for job, _, _ in finishing]
            prompts = [it.spec.prompt for it in items]
            self.store_pool.submit(ids, len(items), lambda: self._store_all(finishing, images, prompts))

    def _store_all(
        self,
        finishing: list[tuple[Job, Made, list[int]]],
        generated: Images,
        prompts: list[str],
    ) -> None:
        """Decode, score and store (or fail) each job of one micro-batch, in the storing thread.

        Decoding (`DECODE_IN_STORE`) and CLIP scoring run here, so they overlap the next
        micro-batch's generation. When an upload gives up past its retry window, only that job
        goes back to `queued` and to `on_storage_failure` (a delayed re-send); the others are
        stored as usual.
        """
        decoding = time.perf_counter()
        images = decoded(generated)
        extra: dict[str, float] = {}
        if any(isinstance(g, Latent) for g in generated):
            extra["decode_s"] = round(time.perf_counter() - decoding, 3)
        scores: list[float | None] = [None] * len(images)
        if self.settings.clip_score:
            scoring = time.perf_counter()
            scores = score_micro_batch(self.cache, images, list(prompts))
            extra["clip_score_s"] = round(time.perf_counter() - scoring, 3)
        for job, made, mine in finishing:
            made = replace(made, images=[images[i] for i in mine], timing={**made.timing, **extra})
            if self.settings.clip_score:
                kept = [scores[i] for i in mine if isinstance(images[i], Image.Image)]
                made = replace(made, clip_score=job_score(kept))
            try:
                with log_fields(**self.job_fields(job)):
                    self._finish(job, made)
            except StorageUnavailable as exc:
                if not self.status.is_terminal(job.job_id):
                    self.status.requeue(job.ref, transient=True, fence=self.fence)
                    self.on_storage_failure([job], exc)
            except (ControlFlow, redis.RedisError):
                raise
            except Exception as exc:  # one job's bad metadata or image must not stop the others' storing
                with log_fields(**self.job_fields(job)):
                    log.exception("storing %s failed unexpectedly", job.job_id)
                self.fail(job, InternalError(f"{type(exc).__name__}: {exc}"))
            finally:
                self.attempts.pop(job.job_id, None)

    def _read_started(self, jobs: list[Job]) -> dict[str, float | None]:
        """One round trip after the starts: each job's attempt (kept for logs) and created time."""
        pipe = self.status.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.hmget(self.status.keys.job(job.ref), [JobField.CREATED, JobField.ATTEMPTS])
        created: dict[str, float | None] = {}
        keep = self.store_pool.pending()
        self.attempts = {job: n for job, n in self.attempts.items() if job in keep}
        for job, (ct, attempts) in zip(jobs, pipe.execute(), strict=True):
            created[job.job_id] = float(ct) if ct else None
            self.attempts[job.job_id] = int(attempts or 0)
        return created

    def _generate_micro_batch(
        self, jobs: list[Job], items: list[Item], progress: StepCheck
    ) -> tuple[Images, dict[str, float]] | None:
        """The micro-batch's images and timing, or None when it stopped (canceled, leases gone)."""
        metrics.MICRO_BATCH.observe(len(items))
        started = time.time()
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
        timing = {"generate_s": round(time.time() - started, 3)}
        log.info("generated %d images for %d jobs in %.2f s", len(items), len(jobs), timing["generate_s"])
        return images, timing

    def _finish(self, job: Job, made: Made) -> None:
        """Store one job's images, or fail it with its images' permanent error."""
        failure = next((img for img in made.images if isinstance(img, KandinskyBatchError)), None)
        try:
            if isinstance(failure, PermanentError):
                self.fail(job, failure)
            else:
                self.store(job, made)
        except LeaseLost:
            log.warning("stopped storing %s: this worker lost its lease", job.job_id)

    def fail(self, job: Job, exc: KandinskyBatchError) -> None:
        with log_fields(**self.job_fields(job)):
            log.info("job %s failed: %s: %s", job.job_id, exc.code, exc.message)
        if self.status.fail(job.ref, exc.code, exc.message, fence=self.fence):
            metrics.job_done(job.spec.mode.value, "failed", exc.code)

    def _check_held(self, job: Job) -> None:
        """The fence before a write: LeaseLost unless this worker still holds the job's lease."""
        if job.job_id not in self.held([job]):
            raise LeaseLost(job.job_id)

    def store(self, job: Job, made: Made) -> None:
        """Upload inline inputs, images, then metadata; then mark the job succeeded (never before)."""
        fmt = self.settings.output_format
        started = time.perf_counter()
        params = self.parameters(job, self._input_refs(job, made.inputs))
        images = [img for img in made.images if isinstance(img, Image.Image)]
        uris = []
        for k, image in enumerate(images):
            data, content_type = encode_image(
                image, fmt, self.settings.output_quality, {**params, "index": k}
            )
            key = image_key(job.batch_id, job.job_id, k, extension(fmt))
            self._check_held(job)
            uris.append(self._put(key, data, content_type))
        metrics.IMAGES.labels(job.spec.mode.value).inc(len(uris))
        status = self.status.job(job.job_id)
        meta = {
            **params,
            "outputs": uris,
            "timings": {**made.timing, "upload_s": round(time.perf_counter() - started, 3)},
            "batch": made.batch,
            "clip_score": made.clip_score,
            "attempt": status.attempts,
            "worker": self.worker_name,
            "queued_at": status.created_at,
            "started_at": status.started_at,
        }
        body = json.dumps(meta, ensure_ascii=False, indent=1).encode()
        self._check_held(job)
        meta_uri = self._put(metadata_key(job.batch_id, job.job_id), body, "application/json")
        metrics.UPLOAD.observe(time.perf_counter() - started)
        mode = job.spec.mode.value
        if self.status.succeed(job.ref, uris, meta_uri, fence=self.fence):
            metrics.job_done(mode, "succeeded")
            log.info("job %s succeeded: %d images", job.job_id, len(uris))
            return
        state = self.status.state(job.job_id)
        if state is JobState.CANCELED:  # canceled while this worker ran it
            metrics.job_done(mode, "canceled")
        log.info("job %s finished as %s elsewhere; outputs kept", job.job_id, state)

    def _put(self, key: str, data: bytes, content_type: str) -> str:
        """Upload, retrying with backoff while the images are still in memory.

        Gives up (StorageUnavailable) only after `upload_retry_window_s`; the task
        then hands the jobs back for a later try.
        """
        deadline = time.monotonic() + self.settings.upload_retry_window_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.storage.put(key, data, content_type)
            except StorageUnavailable as exc:
                delay = compute_backoff(attempt, 0.5, 10.0)
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("upload of %s failed (%s); retry %d in %.1f s", key, exc.message, attempt, delay)
                self.sleep(delay)

    def _input_refs(self, job: Job, inputs: Inputs) -> list[dict[str, str]]:
        """The job's inputs by URI and sha256, storing inline ones first (fenced like any write)."""

        def put(key: str, data: bytes, content_type: str) -> str:
            self._check_held(job)
            return self._put(key, data, content_type)

        return self.stored_inputs.refs(job.batch_id, inputs.sources, put)

    def parameters(self, job: Job, inputs: list[dict[str, str]]) -> dict[str, Any]:
        """What reproduces the image: the spec (inline inputs by stored URI), seed, models, versions."""
        return {
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "spec": spec_with_refs(job.spec.model_dump(mode="json"), inputs),
            "seed": job.spec.seed,
            "inputs": inputs,
            "models": self.cache.models(job.spec.mode),
            "device": str(self.cache.device),
            "dtype": str(self.cache.dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(),
            "versions": versions(),
        }


_VERSIONS: dict[str, str] = {}


def versions() -> dict[str, str]:
    if not _VERSIONS:
        for name in ("kandinsky-batch", "torch", "diffusers", "transformers"):
            try:
                _VERSIONS[name] = importlib_metadata.version(name)
            except importlib_metadata.PackageNotFoundError:
                _VERSIONS[name] = "unknown"
        _VERSIONS["python"] = platform.python_version()
    return _VERSIONS
