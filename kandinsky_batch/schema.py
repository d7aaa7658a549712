"""The job contract shared by producers and workers: modes, the job spec, states.

A spec is validated twice: at submit (the caller sees which field is wrong) and
again at the worker (a bad message fails that job, never the worker).
"""

from __future__ import annotations

import re
import secrets
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
MAX_SEED = 2**32 - 1


def image_seed(seed: int, k: int) -> int:
    """The seed of a job's image k: the job's seed + k, wrapping past MAX_SEED."""
    return (seed + k) % (MAX_SEED + 1)


MAX_PROMPT_CHARS = 2000
MAX_URI_CHARS = 16 * 1024 * 1024  # a data: URL carries the image inline


class Mode(StrEnum):
    TEXT2IMG = "text2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    INTERPOLATE = "interpolate"


class Priority(StrEnum):
    """Where a job waits: every `high` job of a worker's queues is taken before any `normal` one,
    and every `normal` one before any `low` one, whichever tenant sent it."""

    HIGH = "high"  # interactive jobs
    NORMAL = "normal"
    LOW = "low"  # big datasets


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED})

# C0 and C1 controls, DEL and the Unicode line breaks: no URI needs one, and a NUL or a newline
# in a path or a log line is how a URI attacks what reads it.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# No input image is wider or taller than this (JPEG's own limit; the pixel cap keeps the rest).
MAX_COORD = 65535


def _no_control_chars(value: str) -> str:
    found = CONTROL_CHARS.search(value)
    if found:
        raise ValueError(f"must not contain control characters (found {found.group()!r} at {found.start()})")
    return value


Prompt = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
Uri = Annotated[str, Field(min_length=1, max_length=MAX_URI_CHARS), AfterValidator(_no_control_chars)]
MAX_SIDE = 4096  # the most KANDINSKY_BATCH_MAX_SIDE may allow
Side = Annotated[int, Field(ge=64, multiple_of=64)]
Coord = Annotated[int, Field(ge=0, le=MAX_COORD)]
Rect = tuple[Coord, Coord, Coord, Coord]


def _mask_kind(value: object) -> str:
    """Which form of mask a value is, so an error names that form's rule and not the other's."""
    return "uri" if isinstance(value, str) else "rectangles"


# A mask image's URI, or rectangles to repaint; errors are located as `mask.uri` or `mask.rectangles.N`.
Mask = Annotated[
    Annotated[Uri, Tag("uri")] | Annotated[list[Rect], Tag("rectangles")], Discriminator(_mask_kind)
]


class Condition(BaseModel):
    """One interpolation condition: a text or an image, with its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: Prompt | None = None
    image: Uri | None = None
    weight: float = Field(ge=0, le=100)

    @model_validator(mode="after")
    def _one_of_text_or_image(self) -> Condition:
        if (self.text is None) == (self.image is None):
            raise ValueError("a condition has exactly one of 'text' or 'image'")
        if self.text is not None and not self.text.strip():
            raise ValueError("a text condition must not be empty")
        return self


class JobSpec(BaseModel):
    """One generation job. Field names follow diffusers' parameter names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    mode: Mode = Mode.TEXT2IMG
    prompt: Prompt = ""
    negative_prompt: Prompt | None = None
    height: Side = 512
    width: Side = 512
    num_inference_steps: int = Field(100, ge=1, le=500)
    prior_num_inference_steps: int = Field(25, ge=1, le=500)
    guidance_scale: float = Field(4.0, ge=0, le=50)
    prior_guidance_scale: float = Field(4.0, ge=0, le=50)
    num_images: int = Field(1, ge=1, le=8)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    image: Uri | None = None
    mask: Mask | None = None
    strength: float = Field(0.3, gt=0, le=1)
    conditions: list[Condition] | None = Field(None, min_length=2, max_length=8)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)

    @field_validator("height", "width")
    @classmethod
    def _within_max_side(cls, value: int, info: ValidationInfo) -> int:
        # The operator's limit arrives as validation context; without one, the most it may be.
        max_side = (info.context or {}).get("max_side") or MAX_SIDE
        if value > max_side:
            raise ValueError(f"must be at most {max_side}, the maximum side (KANDINSKY_BATCH_MAX_SIDE)")
        return value

    @field_validator("mask")
    @classmethod
    def _rects_are_boxes(cls, value: object) -> object:
        if isinstance(value, list):
            if not value:
                raise ValueError("a rectangle mask needs at least one rectangle")
            for x0, y0, x1, y1 in value:
                if min(x0, y0) < 0 or x1 <= x0 or y1 <= y0:
                    raise ValueError(
                        f"each rectangle is [x0, y0, x1, y1] with 0 <= x0 < x1 <= {MAX_COORD}, "
                        f"0 <= y0 < y1 <= {MAX_COORD}"
                    )
        return value

    @model_validator(mode="after")
    def _inputs_match_mode(self) -> JobSpec:
        if (
            self.mode is Mode.TEXT2IMG
            and self.image is None
            and self.mask is None
            and self.conditions is None
            and self.prompt.strip()
        ):
            return self  # the common case of a dataset, checked in one step
        needs_prompt = self.mode is not Mode.INTERPOLATE
        if needs_prompt and not self.prompt.strip():
            raise ValueError(f"mode {self.mode.value} needs a non-empty 'prompt'")
        wants_image = self.mode in (Mode.IMG2IMG, Mode.INPAINT)
        if wants_image and self.image is None:
            raise ValueError(f"mode {self.mode.value} needs 'image'")
        if not wants_image and self.image is not None:
            raise ValueError(f"mode {self.mode.value} takes no 'image'")
        if self.mode is Mode.INPAINT and self.mask is None:
            raise ValueError("mode inpaint needs 'mask'")
        if self.mode is not Mode.INPAINT and self.mask is not None:
            raise ValueError(f"mode {self.mode.value} takes no 'mask'")
        if self.mode is Mode.INTERPOLATE:
            if self.conditions is None:
                raise ValueError("mode interpolate needs 'conditions' (2 to 8)")
            if sum(c.weight for c in self.conditions) <= 0:
                raise ValueError("interpolation weights must not all be zero")
        elif self.conditions is not None:
            raise ValueError(f"mode {self.mode.value} takes no 'conditions'")
        return self

    def with_seed(self) -> JobSpec:
        """Fix the seed now if the caller gave none, so the job is reproducible."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})

    def wire(self) -> dict[str, Any]:
        """The compact JSON form: only fields that differ from the defaults."""
        return self.model_dump(mode="json", exclude_defaults=True)


class Progress(BaseModel):
    step: int = 0
    total: int = 0


class JobError(BaseModel):
    code: str
    message: str


class JobStatus(BaseModel):
    """What a caller reads about one job."""

    job_id: str
    batch_id: str
    state: JobState
    attempts: int = 0
    seed: int | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress = Field(default_factory=Progress)
    worker: str | None = None
    outputs: list[str] = Field(default_factory=list)
    metadata: str | None = None
    error: JobError | None = None
    spec: dict[str, Any] | None = None  # wire form, once a worker has started the job
    priority: Priority = Priority.NORMAL

    @property
    def index(self) -> int:
        """The job's index in its batch (its id is `{batch_id}-{index}`)."""
        return int(self.job_id[len(self.batch_id) + 1 :])


class GpuSpend(BaseModel):
    """What generating some stored jobs took: the GPU-seconds of their micro-batches, shared per
    image (kandinsky_batch/gpu_time.py), and their cost at `COST_PER_GPU_HOUR` (null without one)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # both always sent

    gpu_seconds: float = 0.0
    cost: float | None = None


class BatchStatus(BaseModel):
    """Counts by state for one batch; their sum is always `total`. What its succeeded jobs spent
    generating, in all and per mode, is counted in the script that marks them succeeded."""

    batch_id: str
    total: int
    counts: dict[JobState, int]
    created_at: float | None = None
    finished_at: float | None = None
    manifest: str | None = None
    tenant: str | None = None  # set for batches submitted over HTTP
    gpu_seconds: float = 0.0
    cost: float | None = None
    by_mode: dict[Mode, GpuSpend] = Field(default_factory=dict)

    @property
    def finished(self) -> int:
        """Jobs in a terminal state."""
        return sum(self.counts.get(s, 0) for s in TERMINAL_STATES)

    @property
    def done(self) -> bool:
        return is_finished(self)


def is_finished(status: JobState | JobStatus | BatchStatus) -> bool:
    """The one "finished" rule: a job in a terminal state, a batch whose every job is."""
    if isinstance(status, BatchStatus):
        return status.finished == status.total
    state = status.state if isinstance(status, JobStatus) else status
    return state in TERMINAL_STATES
