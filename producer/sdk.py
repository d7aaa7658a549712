"""The SDK's one contract: the calls that `Client` (Redis) and `HttpClient` (the HTTP API) both make.

The CLI talks to `Sdk` only; which of the two it holds is decided once (producer/cli/base.py).
A new SDK call is a method here, in both clients and in tests/unit/test_sdk.py, which holds the
three to the same parameter names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, Self

from kandinsky_batch.schema import BatchStatus, JobSpec, JobStatus, Priority
from producer.client import JobResult, RetryResult
from producer.submit import SubmitResult


class NotOverHttp(ValueError):
    """A parameter the HTTP API has no equivalent for, refused before any request is sent.

    `parameter` is the SDK's name for it; `naming` words the same refusal with another name for
    it (the CLI names its flag).
    """

    def __init__(self, parameter: str, template: str) -> None:
        super().__init__(template.format(parameter))
        self.parameter = parameter
        self.template = template

    def naming(self, name: str) -> str:
        return self.template.format(name)


class Sdk(Protocol):
    """Submit, read, wait, cancel, retry and fetch results, on Redis or over the HTTP API.

    Where `HttpClient` differs, on purpose:
    - `submit_batch`: `batch_id`, `strict`, `seeds_per_prompt` and CSV or Parquet files (with
      their `prompt_column`) raise `NotOverHttp`. The API names its batches (a file is keyed by
      its content and defaults, so sending it again sends nothing twice, as on Redis), sends
      every valid line, takes each JSONL line as one job, and reads JSONL only.
    - `manifest_lines` raises `NotOverHttp`: the API shows jobs without their spec (a finished
      batch's manifest is `GET /v1/batches/{id}/manifest`).
    - `jobs` and `statuses` give jobs as the API's pages do: no spec, no metadata.

    Only `Client` has `dead_letters` (an operator's view across tenants; the API has no route
    for it), `url_for` (the API gives URLs already) and `submit_batch(on_line=...)` (the API
    reads the lines itself).
    """

    def submit(
        self,
        spec: JobSpec | dict[str, Any],
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit one job; return its id. Repeats with the same `idempotency_key` give the same id."""
        ...

    def submit_batch(
        self,
        jobs: Iterable[JobSpec | dict[str, Any]] | Path,
        *,
        batch_id: str | None = None,
        defaults: dict[str, Any] | None = None,
        strict: bool = False,
        priority: Priority = Priority.NORMAL,
        seeds_per_prompt: int = 1,
        prompt_column: str = "prompt",
    ) -> SubmitResult:
        """Submit a file or an iterable of specs as one batch; bad lines come back by number."""
        ...

    def status(self, id_: str) -> JobStatus | BatchStatus:
        """A job's or a batch's status; NotFound for an unknown id."""
        ...

    def batch(self, batch_id: str) -> BatchStatus:
        """A batch's counts by state; NotFound for an unknown batch."""
        ...

    def jobs(self, batch_id: str) -> Iterator[JobStatus]:
        """Every job of a batch, in index order."""
        ...

    def statuses(self, id_: str) -> Iterator[JobStatus]:
        """The job with this id, or every job of the batch with this id; NotFound otherwise."""
        ...

    def manifest_lines(self, id_: str) -> Iterator[dict[str, Any]]:
        """One manifest line per job (state, seed, outputs, error, spec); NotFound for an unknown id."""
        ...

    def wait(
        self,
        id_: str,
        timeout: float | None = None,
        poll_s: float = ...,  # each client polls at its own pace
        on_update: Callable[[JobStatus | BatchStatus], None] | None = None,
    ) -> JobStatus | BatchStatus:
        """Poll until the job or the whole batch is finished; TimeoutError after `timeout` s."""
        ...

    def cancel(self, id_: str) -> int:
        """Cancel a job, or every unfinished job of a batch; how many were canceled."""
        ...

    def retry_failed(self, batch_id: str) -> RetryResult:
        """Send a batch's failed jobs again, with their spec and seed."""
        ...

    def results(self, id_: str, download_to: Path | None = None) -> list[JobResult]:
        """Each job's state, outputs and URLs; with `download_to`, the images copied there too."""
        ...

    def iter_results(self, id_: str, download_to: Path | None = None) -> Iterator[JobResult]:
        """Like `results`, one job at a time (for batches too large to hold in a list)."""
        ...

    def download(self, job: JobStatus, folder: Path) -> list[Path]:
        """Copy a job's outputs to `folder/{job_id}/{index}.{ext}`; their paths."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
