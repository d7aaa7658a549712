"""`/v1/jobs`: submit one job, read it, wait for it, fetch its images, cancel.

The job spec is exactly the SDK's and the CLI's, validated by the same rules; a job's id is its
batch id and index, and its batch carries the tenant that submitted it.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any
from urllib.parse import quote, urlparse

from fastapi import APIRouter, Body, Header, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from kandinsky_batch.batch_ids import new_batch_id
from kandinsky_batch.enqueue import cap_reached
from kandinsky_batch.errors import InvalidSpec, NotFound
from kandinsky_batch.keys import JobRef
from kandinsky_batch.schema import JobState, JobStatus, Priority, is_finished
from kandinsky_batch.store.apikeys import ApiKey
from kandinsky_batch.store.queues import Chunk
from kandinsky_batch.submit_one import OneJob
from kandinsky_batch.tenancy import check_inputs, input_uris
from kandinsky_batch.wire import validate_spec
from producer.api.async_store import AsyncStore
from producer.api.deps import (
    BatchIdsDep,
    Caller,
    DrainDep,
    LimitsDep,
    Sdk,
    Secret,
    StoreDep,
    allowed,
    over_quota,
)
from producer.api.estimates import DrainRate
from producer.api.keyed_ids import keyed_batch_id
from producer.api.models import Canceled, JobBody, JobView, streamed
from producer.api.objects import stored_object
from producer.api.ownership import owned_job
from producer.api.problems import ERRORS, Problem
from producer.api.slots import Limits
from producer.api.webhooks.fields import WEBHOOK_FIELDS, webhook_from
from producer.client import Client

router = APIRouter(prefix="/v1", responses=ERRORS)
QUEUE_FULL_RETRY_S = 5
WAIT_POLL_S, WAIT_POLL_MAX_S = 0.1, 0.25  # `Prefer: wait` reads the job's state this often
_WAIT = re.compile(r"(?:^|[,;\s])wait=(\d+(?:\.\d+)?)")


def job_view(
    request: Request, client: Client, drain: DrainRate, job: JobStatus, ahead: int | None = None
) -> dict[str, Any]:
    """A job as the API shows it: its status, its outputs as URLs an HTTP client can fetch, and
    while it waits, its estimated queue position and ETA (producer/api/estimates.py).

    `ahead` is the queue position when the caller knows it (a submit just made it); else it is read.
    """
    data = job.model_dump(mode="json", exclude={"metadata"})
    data["urls"] = {"get": job_url(request, job.job_id), "cancel": job_url(request, job.job_id, "/cancel")}
    data["outputs"] = [output_url(request, client, job.job_id, k, uri) for k, uri in enumerate(job.outputs)]
    data["queue"] = None
    if job.state is JobState.QUEUED:
        position = ahead
        if position is None:
            position = client.status_store.queue_position(JobRef(job.batch_id, job.index), job.priority)
        eta = drain.eta_s(position, sample=ahead is None) if position is not None else None
        data["queue"] = {"position": position, "eta_s": eta}
    return data


def job_url(request: Request, job_id: str, tail: str = "") -> str:
    """The absolute URL of a job's route: formatted, not looked up (`url_for` walks every route)."""
    return f"{str(request.base_url).rstrip('/')}{router.prefix}/jobs/{quote(job_id, safe='')}{tail}"


def output_url(request: Request, client: Client, job_id: str, index: int, uri: str) -> str:
    if urlparse(uri).scheme == "s3":
        return client.url_for(uri)
    return job_url(request, job_id, f"/images/{index}")


@router.post(
    "/jobs",
    status_code=202,
    summary="Submit one job",
    response_model=JobView,
    responses={
        200: {"model": JobView, "description": "With `Prefer: wait=N`: the job, finished within N s."}
    },
)
async def submit_job(
    request: Request,
    secret: Secret,
    client: Sdk,
    store: StoreDep,
    batch_ids: BatchIdsDep,
    drain: DrainDep,
    limits: LimitsDep,
    spec: Annotated[JobBody, Body(description="A job spec, as in docs/jobs.md, and its webhook.")],
    priority: Priority = Priority.NORMAL,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    prefer: Annotated[str | None, Header()] = None,
) -> Response:
    """Answers 202 with the job; with `Prefer: wait=N`, 200 with the finished job if it ends within N s.

    `webhook` (an https URL) and `webhook_events` (`started`, `progress`, `completed`) may
    ride along with the spec's fields; they are the job's webhook, not part of its spec.
    While the job's queue is at its high-water mark the answer is 429 with `Retry-After`.
    """
    # The key check and the submit run on the event loop, in one round trip for a key seen
    # before (producer/api/async_store.py); a new job is answered from what the submit wrote.
    settings = client.settings
    try:
        hook = webhook_from(spec, batch=False, allow_loopback=settings.webhook_allow_loopback)
        job_spec = validate_spec({k: v for k, v in spec.items() if k not in WEBHOOK_FIELDS}, settings)
    except (Problem, InvalidSpec):
        allowed(await store.authenticate(secret))  # a bad key is told so before a bad spec
        raise
    if any(urlparse(uri).scheme not in ("data", "https") for _, uri in input_uris(job_spec)):
        # Inputs from storage: whose they may be depends on the key's tenant (fixed for a key's
        # life), so the key is checked first; other inputs are every tenant's to read.
        known = allowed(await store.authenticate(secret))
        check_inputs(job_spec, known.tenant, client.storage.key_for)
    job = OneJob.seeded(job_spec, priority, hook)
    key_text = idempotency_key or job_spec.idempotency_key
    id_secret = await batch_ids.secret() if key_text else b""

    def chunk_for(key: ApiKey) -> Chunk:
        batch_id = keyed_batch_id(id_secret, key.tenant, key_text) if key_text else new_batch_id()
        return job.chunk(settings, batch_id, key.tenant, key.max_queued)

    now_s = int(time.time())
    key, chunk, pushed = await store.authenticate_and_submit(
        secret, allowed, chunk_for, settings.queue_high_water, now_s
    )
    if pushed.full:
        detail = f"the {job_spec.mode.value} queue holds {pushed.queue_length} messages, its high-water mark"
        raise Problem(429, "Queue full", detail, headers={"Retry-After": str(QUEUE_FULL_RETRY_S)})
    if pushed.over_cap is not None:
        raise over_quota(cap_reached(key.tenant, key.max_queued, [0]))
    ref = JobRef(chunk.batch_id, 0)
    wait = _wait_seconds(prefer, settings.api_wait_max_s)
    if pushed.sent and not wait:  # a new job, answered from what the submit wrote: no read back
        status = job.queued(chunk.batch_id, now_s)
        if drain.due():
            await run_in_threadpool(drain.per_s)
        return _answer(request, job_view(request, client, drain, status, ahead=pushed.ahead), 202)
    if wait:
        await _wait_for(request, store, limits, ref, wait, key.tenant)
    return await run_in_threadpool(_read_answer, request, client, drain, ref, wait)


async def _wait_for(
    request: Request, store: AsyncStore, limits: Limits, ref: JobRef, wait: float, tenant: str
) -> None:
    """`Prefer: wait`: until the job is finished, `wait` seconds have passed or the caller has gone.

    The wait polls on the event loop, holding one of the tenant's wait slots, so waiting takes
    no thread. With none left it returns at once and the job is answered as if no wait was asked
    (202): it is queued already, and a 429 would have its caller send it again.
    """
    slot = limits.waits.try_take(tenant)
    if slot is not None:
        with slot:
            await _until_finished(request, store, ref, wait)


async def _until_finished(request: Request, store: AsyncStore, ref: JobRef, wait: float) -> None:
    deadline = time.monotonic() + wait
    pause = WAIT_POLL_S
    while True:
        state = await store.job_state(ref)
        left = deadline - time.monotonic()
        if state is None or is_finished(state) or left <= 0 or await request.is_disconnected():
            return
        await asyncio.sleep(min(pause, left))
        pause = min(pause * 1.5, WAIT_POLL_MAX_S)


def _read_answer(request: Request, client: Client, drain: DrainRate, ref: JobRef, wait: float) -> Response:
    """The answer for a job that existed already (a repeated Idempotency-Key) or was waited for."""
    status = client.status_store.job(ref)
    code = 200 if is_finished(status) and wait else 202
    return _answer(request, job_view(request, client, drain, status), code)


def _answer(request: Request, view: dict[str, Any], code: int) -> Response:
    return JSONResponse(view, status_code=code, headers={"Location": view["urls"]["get"]})


def _wait_seconds(prefer: str | None, most: float) -> float:
    match = _WAIT.search(prefer or "")
    return min(float(match.group(1)), most) if match else 0.0


@router.get("/jobs/{job_id}", summary="A job's status and outputs", response_model=JobView)
def get_job(request: Request, job_id: str, key: Caller, client: Sdk, drain: DrainDep) -> dict[str, Any]:
    ref = owned_job(client, key, job_id)
    return job_view(request, client, drain, client.status_store.job(ref))


@router.post("/jobs/{job_id}/cancel", summary="Cancel a job", response_model=Canceled)
def cancel_job(job_id: str, key: Caller, client: Sdk) -> dict[str, Any]:
    ref = owned_job(client, key, job_id)
    return {"canceled": client.cancel(ref.id)}  # the SDK's: it writes the manifest if it finished the batch


@router.get(
    "/jobs/{job_id}/images/{index}",
    summary="One output image of a job",
    response_class=Response,
    responses=streamed("image/png", "The PNG (file storage).", presigned=True),
)
def get_image(job_id: str, index: Annotated[int, PathParam(ge=0)], key: Caller, client: Sdk) -> Response:
    """Streams the file from file storage; for S3, redirects to a presigned URL."""
    ref = owned_job(client, key, job_id)
    outputs = client.status_store.job(ref).outputs
    if index >= len(outputs):
        raise NotFound(f"job {job_id!r} has no output {index}")
    return stored_object(client, outputs[index], f"output {index} of job {job_id!r}")
