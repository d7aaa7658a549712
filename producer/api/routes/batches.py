"""`/v1/batches`: upload a JSONL batch (streamed, in bounded memory), read, page, cancel, retry.

An upload is streamed to the bulk submitter in a thread of its own (producer/api/uploads.py);
bad lines are reported by number, as `submit --file` does, and the rest go. Uploads and event
streams last as long as their callers like: each holds one of its tenant's slots
(producer/api/slots.py), and streams run on the event loop (producer/api/events.py), so neither
can take the threads the other routes are served from.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any
from urllib.parse import urlparse

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse

from kandinsky_batch.batch_ids import new_batch_id
from kandinsky_batch.errors import NotFound, OverQuota
from kandinsky_batch.manifest import MANIFEST_CONTENT_TYPE
from kandinsky_batch.schema import JobState, Priority
from kandinsky_batch.webhooks import WebhookEvent
from producer.api.deps import BatchIdsDep, Caller, LimitsDep, Sdk, StoreDep, over_quota
from producer.api.events import event_stream
from producer.api.models import BatchSubmitted, BatchView, Canceled, JobPage, Retried, streamed
from producer.api.objects import stored_object
from producer.api.ownership import owned_batch, owned_batch_on_loop
from producer.api.problems import ERRORS, Problem
from producer.api.slots import HeldStream
from producer.api.sources import small_body, source_chunks
from producer.api.uploads import in_upload_thread, submit_source, upload
from producer.api.webhooks.fields import webhook_from
from producer.client import Client
from producer.submit import Submitter
from producer.watch import summarize

router = APIRouter(prefix="/v1", responses=ERRORS)
PAGE_MAX = 1000


NDJSON_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "One job spec (a JSON object) per line; or, as application/json, "
            '`{"source": "<URI of a JSONL object in the API\'s storage>"}`.'
        ),
        "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["source"],
                    "properties": {"source": {"type": "string"}},
                    "additionalProperties": False,
                }
            },
        },
    }
}


@router.post(
    "/batches",
    status_code=202,
    summary="Submit a JSONL batch",
    response_model=BatchSubmitted,
    openapi_extra=NDJSON_BODY,
)
async def submit_batch(
    request: Request,
    key: Caller,
    client: Sdk,
    batch_ids: BatchIdsDep,
    priority: Priority = Priority.NORMAL,
    defaults: Annotated[str | None, Query(description="JSON object of spec fields every line gets.")] = None,
    webhook: Annotated[str | None, Query(description="An https URL told of the batch's jobs.")] = None,
    webhook_events: Annotated[list[WebhookEvent] | None, Query()] = None,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    """One job per line. Answers with the batch id, the job count and the bad lines by number.

    Over the tenant's cap on unfinished jobs, 429: the lines before `refused_from_line` were
    queued; sending the same body again with the same Idempotency-Key later sends the rest.
    """
    base = _defaults(defaults)
    given: dict[str, Any] = {"webhook": webhook, "webhook_events": webhook_events}
    hook = webhook_from(given, batch=True, allow_loopback=client.settings.webhook_allow_loopback)
    batch_id = await batch_ids.batch_id(key.tenant, idempotency_key) if idempotency_key else new_batch_id()
    submitter = Submitter(
        client.settings,
        client.status_store,
        batch_id,
        priority,
        key.tenant,
        key.max_queued,
        hook,
        key_for=client.storage.key_for,
        keep_indices=False,  # a count is all the answer needs: memory stays bounded
    )
    try:
        if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
            chunks = source_chunks(client, key, await small_body(request))
            submitting = in_upload_thread(request, key.tenant, submit_source, submitter, chunks, base)
            result = await asyncio.shield(submitting)
        else:
            result = await upload(request, submitter, base)
    except OverQuota as exc:
        line = min(exc.refused) + 1 if exc.refused else None
        result = submitter.result
        raise over_quota(exc, batch_id=batch_id, jobs=result.jobs, refused_from_line=line) from None
    if not result.jobs and not result.error_count:
        raise Problem(422, "Invalid request", "the body has no job lines", fields=["body"])
    if not result.jobs:  # every line bad: no batch was made, so there is no batch URL to give
        raise Problem(
            422,
            "Invalid request",
            "no line of the body is a valid job",
            errors=[{"line": e.line, "reason": e.reason} for e in result.errors],
            error_count=result.error_count,
            fields=["body"],
        )
    return {
        "batch_id": result.batch_id,
        "jobs": result.jobs,
        "sent": result.sent,
        "skipped": result.skipped,
        "errors": [{"line": e.line, "reason": e.reason} for e in result.errors],
        "error_count": result.error_count,
        "urls": {"get": str(request.url_for("get_batch", batch_id=result.batch_id))},
    }


def _defaults(defaults: str | None) -> dict[str, Any]:
    try:
        base = json.loads(defaults) if defaults else {}
    except json.JSONDecodeError as exc:
        raise Problem(
            422, "Invalid request", f"defaults: not JSON ({exc.msg})", fields=["defaults"]
        ) from None
    if not isinstance(base, dict):
        raise Problem(422, "Invalid request", "defaults: must be a JSON object", fields=["defaults"])
    return base


@router.get(
    "/batches/{batch_id}", summary="A batch's counts by state, rate and ETA", response_model=BatchView
)
def get_batch(request: Request, batch_id: str, key: Caller, client: Sdk) -> dict[str, Any]:
    batch = owned_batch(client, key, batch_id)
    summary = summarize(batch)
    rate = summary.jobs_per_s
    left = batch.total - batch.finished
    return {
        **batch.model_dump(mode="json"),
        "done": batch.done,
        "jobs_per_s": rate,
        "eta_s": round(left / rate, 1) if rate and left else (0.0 if batch.done else None),
        "manifest_url": manifest_url(request, client, batch_id, batch.manifest) if batch.manifest else None,
        "urls": {"jobs": str(request.url_for("list_jobs", batch_id=batch_id))},
    }


def manifest_url(request: Request, client: Client, batch_id: str, uri: str) -> str:
    """Where an HTTP client fetches a batch's manifest, as its images: a presigned URL for S3, this
    API's manifest route for file storage (a file URI names a path on the API's machine)."""
    if urlparse(uri).scheme == "s3":
        return client.url_for(uri)
    return str(request.url_for("get_manifest", batch_id=batch_id))


@router.get(
    "/batches/{batch_id}/manifest",
    summary="A finished batch's manifest",
    response_class=Response,
    responses=streamed(MANIFEST_CONTENT_TYPE, "The manifest (file storage).", presigned=True),
)
def get_manifest(batch_id: str, key: Caller, client: Sdk) -> Response:
    """One JSON line per job (state, seed, outputs, error, spec), written once every job has finished.

    Streams the file from file storage; for S3, redirects to a presigned URL.
    """
    batch = owned_batch(client, key, batch_id)
    if not batch.manifest:
        raise NotFound(f"batch {batch_id!r} has no manifest yet: it is written when the batch finishes")
    return stored_object(client, batch.manifest, f"the manifest of batch {batch_id!r}", MANIFEST_CONTENT_TYPE)


@router.get("/batches/{batch_id}/jobs", summary="A batch's jobs, a page at a time", response_model=JobPage)
def list_jobs(
    request: Request,
    batch_id: str,
    key: Caller,
    client: Sdk,
    state: JobState | None = None,
    cursor: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = 100,
) -> dict[str, Any]:
    """Jobs from index `cursor` on, at most `limit`; `next_cursor` is null at the end.

    A page reads at most 10 x `limit` jobs, so a rare `state` costs a few pages, never a scan.
    """
    owned_batch(client, key, batch_id)
    jobs, next_cursor = [], None
    for scanned, job in enumerate(client.status_store.jobs(batch_id, start=cursor), start=1):
        if state is None or job.state is state:
            jobs.append(job.model_dump(mode="json", exclude={"metadata", "spec"}))
        if len(jobs) >= limit or scanned >= 10 * limit:
            next_cursor = job.index + 1
            break
    return {"jobs": jobs, "next_cursor": next_cursor}


@router.get(
    "/batches/{batch_id}/events",
    summary="Server-Sent Events of a batch's jobs",
    response_class=StreamingResponse,
    responses=streamed("text/event-stream", "`batch`, then `job` events, then `done`; data is JSON."),
)
async def batch_events(batch_id: str, key: Caller, store: StoreDep, limits: LimitsDep) -> StreamingResponse:
    """`batch` (counts) first, a `job` event per state change, `done` when every job is finished.

    Read from the status event stream from the moment of the request; a comment every 15 s
    keeps idle connections open.
    """
    await owned_batch_on_loop(store, key, batch_id)
    slot = limits.streams.take(key.tenant)  # 429 past the tenant's share, before the stream starts
    return HeldStream(slot, event_stream(store, batch_id), media_type="text/event-stream")


@router.post(
    "/batches/{batch_id}/cancel", summary="Cancel every unfinished job of a batch", response_model=Canceled
)
def cancel_batch(batch_id: str, key: Caller, client: Sdk) -> dict[str, Any]:
    owned_batch(client, key, batch_id)
    return {"canceled": client.cancel(batch_id)}


@router.post(
    "/batches/{batch_id}/retry-failed", summary="Send a batch's failed jobs again", response_model=Retried
)
def retry_failed(batch_id: str, key: Caller, client: Sdk) -> dict[str, Any]:
    owned_batch(client, key, batch_id)
    result = client.retry_failed(batch_id, cap=key.max_queued)
    answer = {
        "retried": result.retried,
        "not_retried": [{"job_id": job, "reason": why} for job, why in result.not_retried],
    }
    if result.over_cap is not None:  # the jobs past the cap stay failed: retry again later
        raise over_quota(result.over_cap, **answer)
    return answer
