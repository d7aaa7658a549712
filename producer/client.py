"""The Python SDK: submit jobs, read their status, wait, cancel. No torch here."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from producer.errors import NotFound
from producer.keys import Keys, split_job_id
from producer.queue import make_celery
from producer.schema import TERMINAL_STATES, BatchStatus, JobSpec, JobStatus
from producer.settings import Settings
from producer.status import StatusStore
from producer.submit import (
    SubmitResult,
    Submitter,
    batch_id_for_file,
    batch_id_for_key,
    new_batch_id,
    read_lines,
    submit_lines,
    validate_spec,
)


class Client:
    """Entry point for producers: `Client(Settings()).submit({...})`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.status_store = StatusStore(self.redis, Keys(settings.key_prefix), settings.job_ttl_s)
        self._app: Celery | None = None

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = make_celery(self.settings)
        return self._app

    def close(self) -> None:
        if self._app is not None:
            self._app.close()
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- submit ----------------------------------------------------------------------

    def submit(self, spec: JobSpec | dict[str, Any]) -> str:
        """Submit one job and return its id. With an `idempotency_key`, repeats return the same id."""
        data = spec.model_dump(mode="json") if isinstance(spec, JobSpec) else spec
        job = validate_spec(data, self.settings)
        key = job.idempotency_key
        batch_id = batch_id_for_key(key) if key else new_batch_id()
        submitter = Submitter(self.settings, self.app, self.status_store, batch_id)
        submitter.add(0, job)
        return submitter.close().job_ids[0]

    def submit_batch(
        self,
        jobs: Iterable[JobSpec | dict[str, Any]] | Path,
        *,
        batch_id: str | None = None,
        defaults: dict[str, Any] | None = None,
        strict: bool = False,
        on_line: Callable[[int], None] | None = None,
    ) -> SubmitResult:
        """Submit many jobs as one batch: a JSONL/CSV path or an iterable of specs.

        Bad entries are reported in `result.errors` with their line number; with
        `strict`, nothing is sent unless all are valid. The same file with the same
        defaults maps to the same batch id, so submitting it again sends only what
        was never sent.
        """
        defaults = defaults or {}
        if isinstance(jobs, Path):
            path = jobs
            batch_id = batch_id or batch_id_for_file(path, defaults)

            def lines() -> Iterable[tuple[int, Any]]:
                return read_lines(path)
        else:
            items = [
                j.model_dump(mode="json", exclude_defaults=True) if isinstance(j, JobSpec) else j
                for j in jobs
            ]
            batch_id = batch_id or new_batch_id()

            def lines() -> Iterable[tuple[int, Any]]:
                return enumerate(items, start=1)

        if strict:
            checked = submit_lines(self._submitter(batch_id), lines(), defaults, strict=True)
            if checked.errors:
                return checked
        return submit_lines(self._submitter(batch_id), lines(), defaults, on_line=on_line)

    def _submitter(self, batch_id: str) -> Submitter:
        return Submitter(self.settings, self.app, self.status_store, batch_id)

    # -- read ------------------------------------------------------------------------

    def status(self, id_: str) -> JobStatus | BatchStatus:
        """A job's or a batch's status; raises NotFound for an unknown id (never 'pending')."""
        if split_job_id(id_) is not None:
            try:
                return self.status_store.job(id_)
            except NotFound:
                pass
        try:
            return self.status_store.batch(id_)
        except NotFound:
            raise NotFound(f"no job or batch with id {id_!r}") from None

    def wait(
        self,
        id_: str,
        timeout: float | None = None,
        poll_s: float = 0.25,
        on_update: Callable[[JobStatus | BatchStatus], None] | None = None,
    ) -> JobStatus | BatchStatus:
        """Poll until the job or the whole batch is finished; TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            current = self.status(id_)
            if on_update:
                on_update(current)
            if is_finished(current):
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{id_} not finished after {timeout} s")
            time.sleep(poll_s)


def is_finished(status: JobStatus | BatchStatus) -> bool:
    if isinstance(status, BatchStatus):
        return status.done
    return status.state in TERMINAL_STATES
