"""The SDK over HTTP: `HttpClient(url, key)` makes the calls of `Sdk` (producer/sdk.py), for callers
with no Redis.

It speaks only the documented API (docs/openapi.json); problem documents come back as the SDK's
own errors (404 NotFound, 422 InvalidSpec, others KandinskyBatchError with an `http_<status>` code).
What the API has no equivalent for is refused with `NotOverHttp` before any request is sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import httpx

from kandinsky_batch.batch_ids import batch_id_for_file
from kandinsky_batch.errors import InvalidSpec, KandinskyBatchError, NotFound
from kandinsky_batch.keys import JobRef
from kandinsky_batch.schema import BatchStatus, JobSpec, JobStatus, Priority
from producer.client import JobResult, RetryResult
from producer.lines import PARQUET_SUFFIXES, LineError
from producer.sdk import NotOverHttp
from producer.submit import SubmitResult
from producer.watch import poll_until_finished

UPLOAD_CHUNK = 1 << 20
RATE_LIMIT_TRIES = 20  # 429 answers waited out per request before giving up
PAGE = 1000  # jobs per page read
IMAGE_SUFFIXES = {"image/png": ".png", "image/webp": ".webp", "image/jpeg": ".jpg"}


class HttpClient:
    def __init__(self, url: str, key: str, timeout_s: float = 90.0) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = self.http.request(method, path, **kwargs)
        for _ in range(RATE_LIMIT_TRIES):
            # Over the key's rate: wait as told, so reading a whole batch is slow rather than an error.
            if answer.status_code != 429 or not _replayable(kwargs):
                break
            time.sleep(_retry_after(answer))
            answer = self.http.request(method, path, **kwargs)
        return answer

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        answer = self._send(method, path, **kwargs)
        if answer.status_code >= 400:
            raise _error(answer)
        return answer.json()

    # -- submit ----------------------------------------------------------------------

    def submit(
        self,
        spec: JobSpec | dict[str, Any],
        priority: Priority = Priority.NORMAL,
        idempotency_key: str | None = None,
    ) -> str:
        data = spec.model_dump(mode="json", exclude_defaults=True) if isinstance(spec, JobSpec) else spec
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        job = self._call("POST", "/v1/jobs", json=data, params={"priority": priority.value}, headers=headers)
        return str(job["job_id"])

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
        idempotency_key: str | None = None,
    ) -> SubmitResult:
        """A JSONL file or an iterable of specs as one batch, streamed to the server.

        A file is keyed by its content and `defaults` unless an `idempotency_key` is given, so
        sending it again sends only what was never sent, as `Client.submit_batch` does. What the
        API cannot do (`Sdk`'s docstring) raises NotOverHttp before anything is sent. With no
        valid line the API makes no batch (a 422 listing the bad lines): that comes back as a
        result of no jobs with its errors, as `Client.submit_batch` gives for such a file.
        """
        _refuse_batch_options(jobs, batch_id, strict, seeds_per_prompt, prompt_column)
        if isinstance(jobs, Path) and idempotency_key is None:
            idempotency_key = batch_id_for_file(jobs, defaults or {})
        params = {"priority": priority.value, **({"defaults": json.dumps(defaults)} if defaults else {})}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = _file_chunks(jobs) if isinstance(jobs, Path) else _spec_lines(jobs)
        response = self._send("POST", "/v1/batches", content=body, params=params, headers=headers)
        if (bad := _no_valid_line(response)) is not None:
            return bad
        if response.status_code >= 400:
            raise _error(response)
        answer = response.json()
        result = SubmitResult(answer["batch_id"], sent=answer["sent"], skipped=answer["skipped"])
        result.errors = [LineError(e["line"], e["reason"]) for e in answer["errors"]]
        result.error_count = int(answer.get("error_count", len(result.errors)))
        result.indices = [job.index for job in self.jobs(answer["batch_id"])]
        result.jobs = int(answer["jobs"])
        return result

    # -- read ------------------------------------------------------------------------

    def status(self, id_: str) -> JobStatus | BatchStatus:
        """A job (its outputs as URLs an HTTP client can fetch) or a batch; NotFound otherwise."""
        if JobRef.parse(id_) is not None:
            try:
                return self._job(id_)
            except NotFound:
                pass
        try:
            return self.batch(id_)
        except NotFound:
            raise NotFound(f"job or batch {id_!r} not found") from None

    def _job(self, job_id: str) -> JobStatus:
        return JobStatus.model_validate(self._call("GET", f"/v1/jobs/{quote(job_id, safe='')}"))

    def batch(self, batch_id: str) -> BatchStatus:
        return BatchStatus.model_validate(self._call("GET", f"/v1/batches/{quote(batch_id, safe='')}"))

    def jobs(self, batch_id: str) -> Iterator[JobStatus]:
        """Every job of a batch, a page at a time, as the pages show them: outputs as storage
        URIs, no spec or metadata."""
        cursor: int | None = 0
        path = f"/v1/batches/{quote(batch_id, safe='')}/jobs"
        while cursor is not None:
            page = self._call("GET", path, params={"cursor": cursor, "limit": PAGE})
            yield from (JobStatus.model_validate(job) for job in page["jobs"])
            cursor = page["next_cursor"]

    def statuses(self, id_: str) -> Iterator[JobStatus]:
        """The job with this id, or every job of the batch with this id; NotFound otherwise."""
        found = self.status(id_)
        return iter([found]) if isinstance(found, JobStatus) else self.jobs(found.batch_id)

    def manifest_lines(self, id_: str) -> Iterator[dict[str, Any]]:
        """Refused: the API shows jobs without their spec (`Sdk`'s docstring)."""
        raise NotOverHttp(
            "manifest_lines", "{} does not work over the HTTP API, which shows jobs without their spec"
        )

    def wait(
        self,
        id_: str,
        timeout: float | None = None,
        poll_s: float = 0.5,
        on_update: Callable[[JobStatus | BatchStatus], None] | None = None,
    ) -> JobStatus | BatchStatus:
        return poll_until_finished(self.status, id_, timeout, poll_s, on_update)

    def results(self, id_: str, download_to: Path | None = None) -> list[JobResult]:
        """Each job's state and output URLs; with `download_to`, the images copied there too."""
        return list(self.iter_results(id_, download_to))

    def iter_results(self, id_: str, download_to: Path | None = None) -> Iterator[JobResult]:
        """Like `results`, one job at a time: each job is read for its URLs as it comes."""
        found = self.status(id_)
        jobs: Iterable[JobStatus] = [found] if isinstance(found, JobStatus) else self.jobs(found.batch_id)
        for listed in jobs:
            job = listed if isinstance(found, JobStatus) else self._job(listed.job_id)
            result = JobResult(
                job_id=job.job_id,
                state=job.state,
                seed=job.seed,
                outputs=job.outputs,
                urls=job.outputs,
                error=job.error,
            )
            if download_to is not None:
                result.files = [str(path) for path in self.download(job, download_to)]
            yield result

    def download(self, job: JobStatus, folder: Path) -> list[Path]:
        """Copy a job's outputs to `folder/{job_id}/{index}.{ext}`: from the URLs the API gave, or
        for outputs given as storage URIs (a page's), from the job's image route."""
        paths = []
        for index, output in enumerate(job.outputs):
            url = output
            if not output.startswith(("http://", "https://")):
                url = f"/v1/jobs/{quote(job.job_id, safe='')}/images/{index}"
            paths.append(self._download(url, folder / job.job_id, index))
        return paths

    def _download(self, url: str, folder: Path, index: int) -> Path:
        request = self.http.build_request("GET", url)
        if _origin(request.url) != _origin(self.http.base_url):
            # A presigned storage URL is signed already: the API key goes to the API only.
            del request.headers["Authorization"]
        answer = self.http.send(request, follow_redirects=True)  # cross-origin redirects drop the key
        if answer.status_code >= 400:
            raise _error(answer)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index}{_suffix(answer)}"
        path.write_bytes(answer.content)
        return path

    # -- change ----------------------------------------------------------------------

    def cancel(self, id_: str) -> int:
        found = self.status(id_)
        path = f"/v1/jobs/{id_}/cancel" if isinstance(found, JobStatus) else f"/v1/batches/{id_}/cancel"
        return int(self._call("POST", path)["canceled"])

    def retry_failed(self, batch_id: str) -> RetryResult:
        answer = self._call("POST", f"/v1/batches/{batch_id}/retry-failed")
        return RetryResult(
            batch_id, answer["retried"], [(j["job_id"], j["reason"]) for j in answer["not_retried"]]
        )


def _refuse_batch_options(
    jobs: object, batch_id: str | None, strict: bool, seeds_per_prompt: int, prompt_column: str
) -> None:
    """What the API cannot do, refused rather than dropped (the reasons are in `Sdk`'s docstring)."""
    if batch_id is not None:
        raise NotOverHttp("batch_id", "{} does not work over the HTTP API (it names the batches)")
    if strict:
        raise NotOverHttp("strict", "{} does not work over the HTTP API (it sends every valid line)")
    if seeds_per_prompt != 1:
        raise NotOverHttp("seeds_per_prompt", "{} does not work over the HTTP API (a line is one job)")
    if isinstance(jobs, Path) and jobs.suffix.lower() == ".csv":
        raise NotOverHttp("jobs", "the HTTP API takes JSONL files, not CSV")
    if isinstance(jobs, Path) and jobs.suffix.lower() in PARQUET_SUFFIXES:
        raise NotOverHttp("jobs", "the HTTP API takes JSONL files, not Parquet")
    if prompt_column != "prompt":
        raise NotOverHttp("prompt_column", "{} does not work over the HTTP API (it takes JSONL files)")


def _no_valid_line(answer: httpx.Response) -> SubmitResult | None:
    """The 422 of an upload with no valid line, as a result of no jobs; None for any other answer."""
    if answer.status_code != 422:
        return None
    try:
        problem = answer.json()
        result = SubmitResult("", error_count=int(problem["error_count"]))
        result.errors = [LineError(int(e["line"]), str(e["reason"])) for e in problem["errors"]]
    except (ValueError, KeyError, TypeError):  # another 422 (a bad `defaults`, no lines at all)
        return None
    return result


def _spec_lines(jobs: Iterable[JobSpec | dict[str, Any]]) -> Iterator[bytes]:
    for job in jobs:
        data = job.model_dump(mode="json", exclude_defaults=True) if isinstance(job, JobSpec) else job
        yield json.dumps(data, ensure_ascii=False).encode() + b"\n"


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        while chunk := fh.read(UPLOAD_CHUNK):
            yield chunk


def _suffix(answer: httpx.Response) -> str:
    """An image's file suffix: its URL's (a presigned one names the object), else its media type's."""
    suffix = PurePosixPath(answer.url.path).suffix
    if suffix:
        return suffix
    media_type = answer.headers.get("content-type", "").split(";")[0].strip()
    return IMAGE_SUFFIXES.get(media_type, ".png")


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _replayable(kwargs: dict[str, Any]) -> bool:
    """A request may be sent again unless its body is a stream already read (a batch upload)."""
    content = kwargs.get("content")
    return content is None or isinstance(content, bytes | str)


def _retry_after(answer: httpx.Response) -> float:
    try:
        return min(60.0, max(0.05, float(answer.headers.get("Retry-After", "1"))))
    except ValueError:
        return 1.0


def _error(answer: httpx.Response) -> KandinskyBatchError:
    try:
        problem = answer.json()
        detail = problem.get("detail") or problem.get("title") or answer.reason_phrase
    except ValueError:
        detail = answer.text[:300] or answer.reason_phrase
    if answer.status_code == 404:
        return NotFound(detail)
    if answer.status_code == 422:
        return InvalidSpec(detail)
    error = KandinskyBatchError(f"HTTP {answer.status_code}: {detail}")
    error.code = f"http_{answer.status_code}"
    return error
