"""The Python SDK: submit jobs, read their status, wait, cancel, retry, fetch results. No torch here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from celery import Celery
from pydantic import BaseModel, Field

from kandinsky_batch.batch_ids import batch_id_for_file, batch_id_for_key, new_batch_id
from kandinsky_batch.broker import make_celery
from kandinsky_batch.enqueue import enqueue
from kandinsky_batch.errors import InvalidSpec, KandinskyBatchError, NotFound, OverQuota
from kandinsky_batch.keys import JobRef, Keys
from kandinsky_batch.manifest import manifest_line, write_manifest
from kandinsky_batch.redis_client import connect
from kandinsky_batch.schema import (
    BatchStatus,
    JobError,
    JobSpec,
    JobState,
    JobStatus,
    Mode,
    Priority,
    is_finished,
)
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage, open_storage
from kandinsky_batch.store.status import StatusStore
from kandinsky_batch.submit_one import OneJob, submit_one
from kandinsky_batch.wire import check_batch_id, validate_spec
from producer.lines import is_table, read_lines
from producer.submit import MAX_SEEDS_PER_PROMPT, SubmitResult, Submitter, submit_lines
from producer.watch import poll_until_finished

log = logging.getLogger(__name__)


class JobResult(BaseModel):
    """One job's outcome: its outputs as stored, and as URLs a plain HTTP client can fetch."""

    job_id: str
    state: JobState
    seed: int | None = None
    outputs: list[str] = Field(default_factory=list)
    urls: list[str] = Field(default_factory=list)  # presigned https for s3://, else the URIs themselves
    metadata: str | None = None
    error: JobError | None = None
    files: list[str] = Field(default_factory=list)  # local copies, with `download_to`


@dataclass
class RetryResult:
    batch_id: str
    retried: list[str] = field(default_factory=list)
    not_retried: list[tuple[str, str]] = field(default_factory=list)  # (job id, why)
    over_cap: OverQuota | None = None  # set when the tenant's cap stopped the retry part way


class Client:
    """Entry point for producers: `Client(Settings()).submit({...})`."""

    def __init__(self, settings: Settings, redis_retries: int = 12) -> None:
        """`redis_retries`: how many times a Redis call is retried (backing off) before it fails."""
        self.settings = settings
        self.redis = connect(settings.redis_url, retries=redis_retries)
        self.status_store = StatusStore(self.redis, Keys(settings.key_prefix), settings.job_ttl_s)
        self._app: Celery | None = None
        self._storage: Storage | None = None

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = make_celery(self.settings)
        return self._app

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = open_storage(self.settings)
        return self._storage

    def _write_manifest(self, batch_id: str) -> None:
        try:
            write_manifest(self.status_store, self.storage, batch_id)
        except (KandinskyBatchError, OSError, ValueError) as exc:
            # The cancel itself succeeded; the manifest can be written again later.
            log.warning("batch %s is done but its manifest was not written: %s", batch_id, exc)

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submit ----------------------------------------------------------------------

    def submit(
        self,
        spec: JobSpec | dict[str, Any],
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit one job and return its id, once its queue is below `QUEUE_HIGH_WATER` messages.

        With an idempotency key (this argument, else the spec's `idempotency_key`), a repeat
        returns the same id and sends nothing: as the HTTP API's Idempotency-Key, in a space of
        keys of its own (docs/python-sdk.md).
        """
        data = spec.model_dump(mode="json") if isinstance(spec, JobSpec) else spec
        job = validate_spec(data, self.settings)
        key = idempotency_key or job.idempotency_key
        batch_id = batch_id_for_key(key) if key else new_batch_id()
        return submit_one(self.status_store, self.settings, OneJob.seeded(job, priority), batch_id).id

    def submit_batch(
        self,
        jobs: Iterable[JobSpec | dict[str, Any]] | Path,
        *,
        batch_id: str | None = None,
        defaults: dict[str, Any] | None = None,
        strict: bool = False,
        on_line: Callable[[int], None] | None = None,
        priority: Priority = Priority.NORMAL,
        seeds_per_prompt: int = 1,
        prompt_column: str = "prompt",
    ) -> SubmitResult:
        """Submit many jobs as one batch: a JSONL/CSV/Parquet path or an iterable of specs.

        Bad entries are reported in `result.errors` with their line number (a Parquet file's
        row number); with `strict`, nothing is sent unless all are valid. The same file with
        the same defaults and options maps to the same batch id, so submitting it again sends
        only what was never sent. `priority=Priority.LOW` lets jobs sent at the normal priority
        go first (for big datasets sharing workers with interactive callers), `Priority.HIGH`
        goes before them (interactive jobs).
        `seeds_per_prompt=K` makes K jobs of each line, seeds `seed .. seed + K - 1` (stepping
        by `num_images`); `prompt_column` names a CSV or Parquet file's prompt column, whose
        other columns are taken if they are spec fields and ignored (named in `result.notes`)
        if not.
        """
        defaults = defaults or {}
        if not 1 <= seeds_per_prompt <= MAX_SEEDS_PER_PROMPT:
            raise ValueError(f"seeds_per_prompt must be 1 to {MAX_SEEDS_PER_PROMPT}, not {seeds_per_prompt}")
        if prompt_column != "prompt" and not (isinstance(jobs, Path) and is_table(jobs)):
            raise ValueError("prompt_column is for CSV and Parquet files")
        if batch_id is not None:
            check_batch_id(batch_id)
        notes: list[str] = []
        if isinstance(jobs, Path):
            path = jobs
            batch_id = batch_id or batch_id_for_file(path, defaults, prompt_column, seeds_per_prompt)

            def lines() -> Iterable[tuple[int, Any]]:
                notes.clear()  # read twice with `strict`: say each thing once
                return read_lines(path, prompt_column, notes)
        else:
            items = [
                j.model_dump(mode="json", exclude_defaults=True) if isinstance(j, JobSpec) else j
                for j in jobs
            ]
            batch_id = batch_id or new_batch_id()

            def lines() -> Iterable[tuple[int, Any]]:
                return enumerate(items, start=1)

        submitter = Submitter(self.settings, self.status_store, batch_id, Priority(priority))
        if strict:
            checked = submit_lines(
                submitter, lines(), defaults, strict=True, seeds_per_prompt=seeds_per_prompt
            )
            checked.notes = list(notes)
            if checked.errors:
                return checked
            submitter = Submitter(self.settings, self.status_store, batch_id, Priority(priority))
        result = submit_lines(
            submitter, lines(), defaults, on_line=on_line, seeds_per_prompt=seeds_per_prompt
        )
        result.notes = list(notes)
        return result

    # -- read ------------------------------------------------------------------------

    def status(self, id_: str) -> JobStatus | BatchStatus:
        """A job's or a batch's status; raises NotFound for an unknown id (never 'pending')."""
        if JobRef.parse(id_) is not None:
            try:
                return self.status_store.job(id_)
            except NotFound:
                pass
        try:
            return self.status_store.batch(id_)
        except NotFound:
            raise NotFound(f"job or batch {id_!r} not found") from None

    def batch(self, batch_id: str) -> BatchStatus:
        """A batch's counts by state; NotFound for an unknown batch."""
        return self.status_store.batch(batch_id)

    def jobs(self, batch_id: str) -> Iterator[JobStatus]:
        """Every job of a batch, read in pipelined chunks (one round trip per ~500 jobs)."""
        return self.status_store.jobs(batch_id)

    def statuses(self, id_: str) -> Iterator[JobStatus]:
        """The job with this id, or every job of the batch with this id; NotFound otherwise."""
        found = self.status(id_)
        if isinstance(found, JobStatus):
            return iter([found])
        return self.jobs(found.batch_id)

    def manifest_lines(self, id_: str) -> Iterator[dict[str, Any]]:
        """One manifest line per job (state, seed, outputs, error, spec); NotFound for an unknown id."""
        return map(manifest_line, self.statuses(id_))

    def dead_letters(self, limit: int = 100) -> list[JobStatus]:
        """Jobs that failed as attempts_exhausted, newest first (those whose status expired are left out)."""
        found = []
        for job in self.status_store.dead_letters(limit):
            try:
                found.append(self.status_store.job(job))
            except NotFound:
                continue
        return found

    def wait(
        self,
        id_: str,
        timeout: float | None = None,
        poll_s: float = 0.25,
        on_update: Callable[[JobStatus | BatchStatus], None] | None = None,
    ) -> JobStatus | BatchStatus:
        """Poll until the job or the whole batch is finished; TimeoutError after `timeout` s."""
        return poll_until_finished(self.status, id_, timeout, poll_s, on_update)

    # -- change ----------------------------------------------------------------------

    def cancel(self, id_: str) -> int:
        """Cancel a job, or every unfinished job of a batch; return how many were canceled.

        Queued jobs never start; running ones stop at the worker's next step check.
        Each job moves through StatusStore's atomic transition, so batch counters stay exact;
        a batch's jobs go in pipelined chunks (one round trip per ~500 jobs).
        """
        found = self.status(id_)
        jobs = [found.job_id] if isinstance(found, JobStatus) else self._unfinished(found.batch_id)
        canceled = self.status_store.cancel_many(jobs)
        for batch_id in canceled.batches_done:  # this cancel finished the batch: its manifest is written here
            self._write_manifest(batch_id)
        return canceled.count

    def _unfinished(self, batch_id: str) -> Iterator[str]:
        """Ids of the batch's queued or running jobs."""
        for ref, state in self.status_store.job_states(batch_id):
            if not is_finished(state):
                yield ref.id

    def retry_failed(self, batch_id: str, cap: int = 0) -> RetryResult:
        """Send a batch's failed jobs again, with their stored spec and seed.

        A job that failed before any worker started it has no stored spec and is
        reported in `not_retried` instead. With `cap` (the API key's), its tenant is held to
        that many unfinished jobs, by the same check as a submit: the jobs past it stay failed
        and `over_cap` says so.
        """
        self.status_store.batch(batch_id)  # NotFound for an unknown batch
        result = RetryResult(batch_id)
        pending: dict[tuple[Mode, Priority], list[tuple[int, JobSpec, JobError | None]]] = {}
        for job in self.jobs(batch_id):
            if job.state is not JobState.FAILED:
                continue
            if job.spec is None:
                result.not_retried.append(
                    (job.job_id, "no stored spec: it failed before a worker started it")
                )
                continue
            try:
                spec = validate_spec(job.spec, self.settings)
            except InvalidSpec as exc:
                result.not_retried.append((job.job_id, f"stored spec is invalid now: {exc.message}"))
                continue
            # Back to queued with the old error dropped, in one atomic step.
            try:
                if not self.status_store.retry(job.job_id, cap):
                    continue  # someone else moved it meanwhile
            except OverQuota as exc:
                result.over_cap = exc
                break
            group = pending.setdefault((spec.mode, job.priority), [])
            group.append((job.index, spec, job.error))
            if len(group) >= self.settings.chunk_size:
                self._resend(batch_id, job.priority, pending.pop((spec.mode, job.priority)), result)
        for (_, priority), group in pending.items():
            self._resend(batch_id, priority, group, result)
        return result

    def _resend(
        self,
        batch_id: str,
        priority: Priority,
        chunk: list[tuple[int, JobSpec, JobError | None]],
        result: RetryResult,
    ) -> None:
        jobs = [(index, spec) for index, spec, _ in chunk]
        try:
            enqueue(self.status_store, self.settings, batch_id, jobs, priority)
        except Exception:
            # Not sent: put them back as they were rather than leave them queued with no message.
            for index, _, error in chunk:
                code, message = (error.code, error.message) if error else ("failed", "")
                if self.status_store.fail(JobRef(batch_id, index), code, message).batch_done:
                    self._write_manifest(batch_id)
            raise
        result.retried += [JobRef(batch_id, index).id for index, _ in jobs]

    # -- results ---------------------------------------------------------------------

    def results(self, id_: str, download_to: Path | None = None) -> list[JobResult]:
        """Each job's state and outputs (presigned URLs for s3://, issued now).

        With `download_to`, every output is copied to `download_to/{job_id}/{index}.{ext}`.
        """
        return list(self.iter_results(id_, download_to))

    def iter_results(self, id_: str, download_to: Path | None = None) -> Iterator[JobResult]:
        """Like `results`, one job at a time (for batches too large to hold in a list)."""
        for job in self.statuses(id_):
            result = JobResult(
                job_id=job.job_id,
                state=job.state,
                seed=job.seed,
                outputs=job.outputs,
                urls=[self.url_for(uri) for uri in job.outputs],
                metadata=job.metadata,
                error=job.error,
            )
            if download_to is not None:
                result.files = [str(p) for p in self.download(job, download_to)]
            yield result

    def url_for(self, uri: str) -> str:
        """A URL a plain HTTP client can fetch: presigned (settings.presign_expiry_s) for s3://."""
        key = self.storage.key_for(uri)
        if key is None:
            return uri
        return self.storage.presign(key, self.settings.presign_expiry_s)

    def download(self, job: JobStatus, folder: Path) -> list[Path]:
        """Copy a job's outputs from storage to `folder/{job_id}/{index}.{ext}`."""
        paths = []
        for index, uri in enumerate(job.outputs):
            key = self.storage.key_for(uri)
            if key is None:
                raise NotFound(
                    f"output {uri} not found in the configured storage {self.settings.storage_url}"
                )
            try:
                data = self.storage.get(key)
            except KeyError:
                raise NotFound(f"output {uri} not found in storage") from None
            ext = PurePosixPath(urlparse(uri).path).suffix or ".bin"
            path = folder / job.job_id / f"{index}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            paths.append(path)
        return paths
