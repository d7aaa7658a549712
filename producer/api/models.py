"""The API's documents, as docs/openapi.json publishes them: what a route takes and what it answers.

Each read is checked against its model as it is answered (`response_model`), so the document
promises no field the server does not send, and a client generated from it knows every field.
The views extend the core's `JobStatus` and `BatchStatus`: a field added there shows here.
Times are Unix epoch seconds (UTC, a float), as the store keeps them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, computed_field
from pydantic.json_schema import SkipJsonSchema

from kandinsky_batch.schema import BatchStatus, GpuSpend, JobSpec, JobStatus, Mode, is_finished
from kandinsky_batch.webhooks import MAX_URL_CHARS, WebhookEvent

EPOCH = "Unix epoch seconds (UTC, a float)"
GPU_SECONDS = (
    "GPU-seconds its succeeded jobs took to generate: each job its images' share of its micro-batch's "
    "generate call (not idle time, not storing)."
)
COST = "What those GPU-seconds cost at the workers' COST_PER_GPU_HOUR; null where none was set."
BY_MODE = "GPU-seconds and cost per mode."
# An answer always carries each of its fields (null when unknown): the document says so.
ANSWER = ConfigDict(json_schema_serialization_defaults_required=True)


def streamed(media_type: str, what: str, presigned: bool = False) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route that answers other than JSON: `what`, as `media_type`, and with
    S3 storage (`presigned`) a 307 to a presigned URL of it."""
    text = media_type.startswith("text/") or media_type.endswith("ndjson")
    content = {media_type: {"schema": {"type": "string"} if text else {"type": "string", "format": "binary"}}}
    answers: dict[int | str, dict[str, Any]] = {200: {"description": what, "content": content}}
    if presigned:
        answers[307] = {"description": "S3 storage: a redirect to a presigned URL of it."}
    return answers


class JobRequest(JobSpec):
    """A job spec (docs/jobs.md) and, beside its fields, the job's webhook (docs/http-api.md)."""

    webhook: str | None = Field(
        None, max_length=MAX_URL_CHARS, description="An https URL told of the job; not part of its spec."
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None, description="What the webhook is told (`completed` when not given); needs `webhook`."
    )


_OBJECT = TypeAdapter(dict[str, Any])


def _an_object(value: Any) -> dict[str, Any]:
    return _OBJECT.validate_python(value)


# The body of `POST /v1/jobs` as the document shows it (`JobRequest`), taken as the JSON object it
# is: the route validates it itself, so that a bad key is told before a bad spec, the operator's
# `MAX_SIDE` applies, and an invalid spec is the SDK's problem document (its code, its fields).
JobBody = Annotated[dict[str, Any], PlainValidator(_an_object, json_schema_input_type=JobRequest)]


class JobFields(JobStatus):
    """A job's status as the API shows it: times described, the worker's metadata left out."""

    model_config = ANSWER

    created_at: float | None = Field(None, description=f"When it was submitted: {EPOCH}.")
    started_at: float | None = Field(None, description=f"When it last started: {EPOCH}.")
    finished_at: float | None = Field(None, description=f"When it finished: {EPOCH}.")
    metadata: SkipJsonSchema[str | None] = Field(None, exclude=True)


class JobUrls(BaseModel):
    model_config = ANSWER

    get: str = Field(description="This job.")
    cancel: str = Field(description="POST here to cancel it.")


class QueuePlace(BaseModel):
    """Where a queued job waits: estimates (docs/http-api.md)."""

    model_config = ANSWER

    position: int | None = Field(description="Jobs ahead of it in its queue.")
    eta_s: float | None = Field(description="Seconds until it starts; null until the drain rate is known.")


class JobView(JobFields):
    """A job: its status, its images as URLs an HTTP client can fetch, and while queued its place."""

    outputs: list[str] = Field(
        default_factory=list,
        description="Its images' URLs: this API's image route (file storage) or presigned (S3).",
    )
    spec: dict[str, Any] | None = Field(
        None, description="Its spec in wire form (the fields that differ from the defaults), once started."
    )
    urls: JobUrls
    queue: QueuePlace | None = Field(description="Its place while queued; null in any other state.")


class PageJob(JobFields):
    """A job as a page lists it: its status without its spec (read the job for that)."""

    outputs: list[str] = Field(default_factory=list, description="Its images' storage URIs.")
    spec: SkipJsonSchema[dict[str, Any] | None] = Field(None, exclude=True)


class JobPage(BaseModel):
    model_config = ANSWER

    jobs: list[PageJob]
    next_cursor: int | None = Field(description="The `cursor` of the next page; null at the end.")


class BatchUrls(BaseModel):
    model_config = ANSWER

    jobs: str = Field(description="Its jobs, a page at a time.")


class BatchView(BatchStatus):
    """A batch: its counts by state, how fast it goes, and its manifest once it is finished."""

    model_config = ANSWER

    created_at: float | None = Field(None, description=f"When its first job was submitted: {EPOCH}.")
    finished_at: float | None = Field(None, description=f"When its last job finished: {EPOCH}.")
    manifest: str | None = Field(None, description="The storage URI of its manifest, once written.")
    tenant: str | None = Field(None, description="Its tenant; null for a batch sent on Redis.")
    gpu_seconds: float = Field(0.0, description=GPU_SECONDS)
    cost: float | None = Field(None, description=COST)
    by_mode: dict[Mode, GpuSpend] = Field(default_factory=dict, description=BY_MODE)
    jobs_per_s: float | None = Field(description="Jobs finished per second lately; null before any.")
    eta_s: float | None = Field(description="Seconds until every job is finished, at that rate.")
    manifest_url: str | None = Field(description="Where to fetch its manifest, once written.")
    urls: BatchUrls

    @computed_field(description="Every job is finished.")  # type: ignore[prop-decorator]
    @property
    def done(self) -> bool:
        return is_finished(self)


class BadLine(BaseModel):
    model_config = ANSWER

    line: int = Field(description="Its line number, from 1.")
    reason: str


class SubmittedUrls(BaseModel):
    model_config = ANSWER

    get: str = Field(description="The batch.")


class BatchSubmitted(BaseModel):
    """What an upload queued, and its bad lines by number (the first 100; all are counted)."""

    model_config = ANSWER

    batch_id: str
    jobs: int = Field(description="Jobs in the batch from this upload.")
    sent: int = Field(description="Jobs queued by this upload.")
    skipped: int = Field(description="Jobs an earlier upload with the same Idempotency-Key queued.")
    errors: list[BadLine]
    error_count: int = Field(description="Bad lines, all of them.")
    urls: SubmittedUrls


class Canceled(BaseModel):
    model_config = ANSWER

    canceled: int = Field(description="Jobs this call canceled.")


class NotRetried(BaseModel):
    model_config = ANSWER

    job_id: str
    reason: str


class Retried(BaseModel):
    model_config = ANSWER

    retried: list[str] = Field(description="Ids of the failed jobs sent again.")
    not_retried: list[NotRetried]


class Usage(BaseModel):
    """A tenant's jobs by state, its images, and what its succeeded jobs spent generating
    (counters the store may add to pass through)."""

    model_config = ConfigDict(extra="allow", json_schema_serialization_defaults_required=True)

    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    images_submitted: int = 0
    images_succeeded: int = 0
    gpu_seconds: float = Field(0.0, description=GPU_SECONDS)
    cost: float | None = Field(None, description=COST)
    by_mode: dict[Mode, GpuSpend] = Field(default_factory=dict, description=BY_MODE)


class TenantsUsage(BaseModel):
    model_config = ANSWER

    tenants: dict[str, Usage] = Field(description="Tenant -> its usage.")


class WebhookSecret(BaseModel):
    model_config = ANSWER

    tenant: str
    secret: str = Field(description="`whsec_` and base64: verify `webhook-signature` with it.")


class DeadDelivery(BaseModel):
    model_config = ANSWER

    id: str = Field(description="Its `webhook-id`.")
    url: str
    type: str = Field(description="job.started, job.progress, job.completed or batch.completed.")
    attempts: int
    created: float = Field(description=f"When its event happened: {EPOCH}.")
    last_error: str
    history: list[str] = Field(description="The last few tries' outcomes, newest last.")
    data: dict[str, Any] = Field(description="The event's data, as it was to be sent.")


class DeadDeliveries(BaseModel):
    model_config = ANSWER

    deliveries: list[DeadDelivery]


class Health(BaseModel):
    model_config = ANSWER

    status: str


class BadField(BaseModel):
    field: str
    message: str


class ProblemDocument(BaseModel):
    """An error (RFC 9457), sent as `application/problem+json`; the members past `detail` appear
    where they apply, and a client ignores any it does not know."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    code: str | None = Field(None, description="The SDK's error code (an invalid job spec).")
    fields: list[str] | None = Field(None, description="The request's fields that are wrong.")
    errors: list[BadField | BadLine] | None = Field(
        None, description="Each bad field, or each bad line of an upload (the first 100)."
    )
    error_count: int | None = Field(None, description="An upload's bad lines, all of them.")
    batch_id: str | None = Field(None, description="Over the cap: the batch the upload went to.")
    jobs: int | None = Field(None, description="Over the cap: the upload's jobs that were queued.")
    refused_from_line: int | None = Field(None, description="Over the cap: the first line not queued.")
    retried: list[str] | None = Field(None, description="Over the cap: the jobs that were sent again.")
    not_retried: list[NotRetried] | None = None
