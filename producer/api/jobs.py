"""`/v1/jobs` and `/v1/batches/{id}`: submit one job, read it, wait for it, fetch its images, cancel.

The job spec is exactly the SDK's and the CLI's, validated by the same rules; a job's id is its
batch id and index, and its batch carries the tenant that submitted it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlparse

from fastapi import APIRouter, Body, Depends, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError

from kandinsky_batch.errors import NotFound, OverQuota
from kandinsky_batch.keys import JobRef
from kandinsky_batch.schema import JobState, JobStatus, Priority, is_finished
from kandinsky_batch.store.apikeys import ApiKey
from kandinsky_batch.webhooks import Webhook
from kandinsky_batch.wire import validate_spec
from producer.api.auth import caller, client_of, owned_job
from producer.api.estimates import DrainRate
from producer.api.problems import Problem
from producer.client import Client
from producer.submit import Submitter, batch_id_for_key, new_batch_id

router = APIRouter(prefix="/v1")
WEBHOOK_FIELDS = ("webhook", "webhook_events")
_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")

Caller = Annotated[ApiKey, Depends(caller)]
Sdk = Annotated[Client, Depends(client_of)]


def job_view(request: Request, client: Client, job: JobStatus) -> dict[str, Any]:
    """A job as the API shows it: its status, its outputs as URLs an HTTP client can fetch, and
    while it waits, its estimated queue position and ETA (producer/api/estimates.py)."""
    data = job.model_dump(mode="json", exclude={"metadata"})
    data["urls"] = {
        "get": str(request.url_for("get_job", job_id=job.job_id)),
        "cancel": str(request.url_for("cancel_job", job_id=job.job_id)),
    }
    data["outputs"] = [output_url(request, client, job.job_id, k, uri) for k, uri in enumerate(job.outputs)]
    data["queue"] = None
    if job.state is JobState.QUEUED:
        position = client.status_store.queue_position(JobRef(job.batch_id, job.index), job.priority)
        drain: DrainRate = request.app.state.drain
        eta = drain.eta_s(position) if position is not None else None
        data["queue"] = {"position": position, "eta_s": eta}
    return data


def webhook_from(fields: dict[str, Any], batch: bool) -> str:
    """The JSON of a webhook given as `webhook` (an https URL) and `webhook_events`, or ''."""
    url, events = fields.get("webhook"), fields.get("webhook_events")
    if url is None:
        if events is not None:
            raise Problem(
                422, "Invalid request", "webhook_events: needs a webhook", fields=["webhook_events"]
            )
        return ""
    given: dict[str, Any] = {"url": url, "batch": batch}
    if events is not None:
        given["events"] = events
    try:
        return Webhook.model_validate(given).to_json()
    except ValidationError as exc:
        errors = exc.errors()
        names = ["webhook_events" if e["loc"] and e["loc"][0] == "events" else "webhook" for e in errors]
        detail = "; ".join(f"{n}: {e['msg']}" for n, e in zip(names, errors, strict=True))
        raise Problem(422, "Invalid request", detail, fields=sorted(set(names))) from None


def over_quota(exc: OverQuota, **extra: Any) -> Problem:
    return Problem(429, "Too many queued jobs", exc.message, headers={"Retry-After": "30"}, **extra)


def output_url(request: Request, client: Client, job_id: str, index: int, uri: str) -> str:
    if urlparse(uri).scheme == "s3":
        return client.url_for(uri)
    return str(request.url_for("get_image", job_id=job_id, index=index))


@router.post("/jobs", status_code=202, summary="Submit one job")
def submit_job(
    request: Request,
    key: Caller,
    client: Sdk,
    spec: Annotated[dict[str, Any], Body(description="A job spec, as in the README's table.")],
    priority: Priority = Priority.NORMAL,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    prefer: Annotated[str | None, Header()] = None,
) -> Response:
    """Answers 202 with the job; with `Prefer: wait=N`, 200 with the finished job if it ends within N s.

    `webhook` (an https URL) and `webhook_events` (`started`, `progress`, `completed`) may
    ride along with the spec's fields; they are the job's webhook, not part of its spec.
    """
    hook = webhook_from(spec, batch=False)
    job_spec = validate_spec({k: v for k, v in spec.items() if k not in WEBHOOK_FIELDS}, client.settings)
    key_text = idempotency_key or job_spec.idempotency_key
    batch_id = batch_id_for_key(key_text, key.tenant) if key_text else new_batch_id()
    submitter = Submitter(
        client.settings, client.status_store, batch_id, priority, key.tenant, key.max_queued, hook
    )
    try:
        submitter.add(0, job_spec)
        job_id = submitter.close().job_ids[0]
    except OverQuota as exc:
        raise over_quota(exc) from None
    wait = _wait_seconds(prefer, client.settings.api_wait_max_s)
    status = client.status_store.job(job_id)
    deadline = time.monotonic() + wait
    while wait and not is_finished(status) and time.monotonic() < deadline:
        time.sleep(0.1)
        status = client.status_store.job(job_id)
    code = 200 if is_finished(status) and wait else 202
    headers = {"Location": str(request.url_for("get_job", job_id=job_id))}
    return JSONResponse(job_view(request, client, status), status_code=code, headers=headers)


def _wait_seconds(prefer: str | None, most: float) -> float:
    match = _WAIT.search(prefer or "")
    return min(float(match.group(1)), most) if match else 0.0


@router.get("/jobs/{job_id}", summary="A job's status and outputs")
def get_job(request: Request, job_id: str, key: Caller, client: Sdk) -> dict[str, Any]:
    ref = owned_job(client, key, job_id)
    return job_view(request, client, client.status_store.job(ref))


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job")
def cancel_job(job_id: str, key: Caller, client: Sdk) -> dict[str, Any]:
    ref = owned_job(client, key, job_id)
    return {"canceled": int(client.status_store.cancel(ref))}


@router.get("/jobs/{job_id}/images/{index}", summary="One output image of a job", response_class=Response)
def get_image(job_id: str, index: Annotated[int, PathParam(ge=0)], key: Caller, client: Sdk) -> Response:
    """Streams the file from file storage; for S3, redirects to a presigned URL."""
    ref = owned_job(client, key, job_id)
    outputs = client.status_store.job(ref).outputs
    if index >= len(outputs):
        raise NotFound(f"job {job_id!r} has no output {index}")
    uri = outputs[index]
    if urlparse(uri).scheme == "s3":
        return RedirectResponse(client.url_for(uri), status_code=307)
    if client.storage.key_for(uri) is None:  # only files inside the configured storage are served
        raise NotFound(f"output {index} of job {job_id!r} is not in this API's storage")
    path = Path(unquote(urlparse(uri).path))
    if not path.is_file():
        raise NotFound(f"output {index} of job {job_id!r} is missing from storage")
    return FileResponse(path)
