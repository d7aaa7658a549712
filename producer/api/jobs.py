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

from kandinsky_batch.errors import NotFound
from kandinsky_batch.schema import JobStatus, Priority, is_finished
from kandinsky_batch.store.apikeys import ApiKey
from kandinsky_batch.wire import validate_spec
from producer.api.auth import caller, client_of, owned_job
from producer.client import Client
from producer.submit import Submitter, batch_id_for_key, new_batch_id

router = APIRouter(prefix="/v1")
_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")

Caller = Annotated[ApiKey, Depends(caller)]
Sdk = Annotated[Client, Depends(client_of)]


def job_view(request: Request, client: Client, job: JobStatus) -> dict[str, Any]:
    """A job as the API shows it: its status, and its outputs as URLs an HTTP client can fetch."""
    data = job.model_dump(mode="json", exclude={"metadata"})
    data["urls"] = {
        "get": str(request.url_for("get_job", job_id=job.job_id)),
        "cancel": str(request.url_for("cancel_job", job_id=job.job_id)),
    }
    data["outputs"] = [output_url(request, client, job.job_id, k, uri) for k, uri in enumerate(job.outputs)]
    return data


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
    """Answers 202 with the job; with `Prefer: wait=N`, 200 with the finished job if it ends within N s."""
    job_spec = validate_spec(spec, client.settings)
    key_text = idempotency_key or job_spec.idempotency_key
    batch_id = batch_id_for_key(key_text, key.tenant) if key_text else new_batch_id()
    submitter = Submitter(client.settings, client.status_store, batch_id, priority, tenant=key.tenant)
    submitter.add(0, job_spec)
    job_id = submitter.close().job_ids[0]
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
