"""Storing what a micro-batch made, in the storing thread: decode, score, encode, upload, record.

Each job's objects go under deterministic keys (inline inputs once per batch, its images, then its
metadata), every upload fenced on this worker still holding the job's lease; only then is the
job `succeeded`. A job whose images carry a permanent error fails with it instead. Uploads are
retried with backoff while the images are in memory; past `upload_retry_window_s` the job goes
back to `queued` and to `on_storage_failure`, the one way a storage outage leaves the engine (the
worker sends such jobs again after a backoff). The move that finishes a batch is followed by its
manifest (`on_batch_done`). Encoding is worker/outputs.py's.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata as importlib_metadata
from typing import Any

import redis
import torch
from PIL import Image

from kandinsky_batch.errors import (
    ControlFlow,
    InternalError,
    KandinskyBatchError,
    LeaseLost,
    PermanentError,
    StorageUnavailable,
    compute_backoff,
)
from kandinsky_batch.gpu_time import GpuShare
from kandinsky_batch.logs import log_fields
from kandinsky_batch.manifest import BatchDone
from kandinsky_batch.schema import JobState
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage, image_key, metadata_key
from kandinsky_batch.store.status import Moved, StatusStore
from worker import metrics
from worker.clip import job_score, score_micro_batch
from worker.generate import Inputs, Latent, decoded
from worker.jobs import Job, JobLog
from worker.leases import Fence
from worker.outputs import encode_image, extension
from worker.pipelines import PipelineCache
from worker.splitting import Images
from worker.stored_inputs import StoredInputs, spec_with_refs

log = logging.getLogger(__name__)

StorageFailure = Callable[[list[Job], StorageUnavailable], None]  # jobs handed back to `queued`


def left_queued(jobs: list[Job], exc: StorageUnavailable) -> None:
    """With no worker around the engine (tests, tools), jobs handed back by storage stay queued."""
    if jobs:
        log.warning("storage unavailable (%s): %d jobs left queued", exc.message, len(jobs))


@dataclass(frozen=True)
class Made:
    """What a micro-batch made for one job: its images (or their errors), inputs, timing, scores,
    and its images' share of the micro-batch's generate call (`gpu`)."""

    images: list[Image.Image | KandinskyBatchError]
    inputs: Inputs
    timing: dict[str, float]
    batch: dict[str, Any]
    gpu: GpuShare
    clip_score: float | list[float | None] | None = None


Finishing = list[tuple[Job, Made, list[int]]]  # each job to store, and its items in the micro-batch


class Storer:
    """How each job of a micro-batch ends on this worker: stored and `succeeded`, or `failed`."""

    def __init__(
        self,
        settings: Settings,
        cache: PipelineCache,
        storage: Storage,
        status: StatusStore,
        fence: Fence,
        job_log: JobLog,
        on_storage_failure: StorageFailure = left_queued,
        on_batch_done: BatchDone | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.storage = storage
        self.status = status
        self.fence = fence
        self.log = job_log
        self.on_storage_failure = on_storage_failure
        self.on_batch_done = on_batch_done
        self.sleep = sleep
        self.stored_inputs = StoredInputs()

    def store_all(self, finishing: Finishing, generated: Images, prompts: list[str]) -> None:
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
                with log_fields(**self.log.job_fields(job)):
                    self._finish(job, made)
            except StorageUnavailable as exc:
                if not self.status.is_terminal(job.job_id):
                    self.status.requeue(job.ref, transient=True, fence=self.fence.name)
                    self.on_storage_failure([job], exc)
            except (ControlFlow, redis.RedisError):
                raise
            except Exception as exc:  # one job's bad metadata or image must not stop the others' storing
                with log_fields(**self.log.job_fields(job)):
                    log.exception("storing %s failed unexpectedly", job.job_id)
                self.fail(job, InternalError(f"{type(exc).__name__}: {exc}"))
            finally:
                self.log.forget(job.job_id)

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
        """Fail one job with its error's code (fenced); its batch's manifest if that finished it."""
        with log_fields(**self.log.job_fields(job)):
            log.info("job %s failed: %s: %s", job.job_id, exc.code, exc.message)
        moved = self.status.fail(job.ref, exc.code, exc.message, fence=self.fence.name)
        if moved:
            metrics.job_done(job.spec.mode.value, "failed", exc.code)
        self._batch_done(job, moved)

    def _batch_done(self, job: Job, moved: Moved) -> None:
        if moved.batch_done and self.on_batch_done is not None:
            self.on_batch_done(job.batch_id)

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
            self.fence.check(job.job_id)
            uris.append(self._put(key, data, content_type))
        metrics.IMAGES.labels(job.spec.mode.value).inc(len(uris))
        status = self.status.job(job.job_id)
        meta = {
            **params,
            "outputs": uris,
            "timings": {**made.timing, "upload_s": round(time.perf_counter() - started, 3)},
            "batch": made.batch,
            "clip_score": made.clip_score,
            "gpu_seconds": made.gpu.seconds,
            "cost": made.gpu.cost,
            "attempt": status.attempts,
            "worker": self.fence.worker,
            "queued_at": status.created_at,
            "started_at": status.started_at,
        }
        body = json.dumps(meta, ensure_ascii=False, indent=1).encode()
        self.fence.check(job.job_id)
        meta_uri = self._put(metadata_key(job.batch_id, job.job_id), body, "application/json")
        metrics.UPLOAD.observe(time.perf_counter() - started)
        mode = job.spec.mode.value
        moved = self.status.succeed(job.ref, uris, meta_uri, fence=self.fence.name, spent=(mode, made.gpu))
        if moved:
            metrics.job_done(mode, "succeeded")
            metrics.spent(mode, job.tenant, made.gpu.seconds, made.gpu.cost)
            log.info("job %s succeeded: %d images", job.job_id, len(uris))
            self._batch_done(job, moved)
            return
        state = self.status.state(job.job_id)
        if state is JobState.CANCELED:  # canceled while this worker ran it
            metrics.job_done(mode, "canceled")
        log.info("job %s finished as %s elsewhere; outputs kept", job.job_id, state)

    def _put(self, key: str, data: bytes, content_type: str) -> str:
        """Upload, retrying with backoff while the images are still in memory.

        Gives up (StorageUnavailable) only after `upload_retry_window_s`; the job is then
        handed back for a later try.
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
            self.fence.check(job.job_id)
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
