"""The one settings object, read from `KANDINSKY_BATCH_*` environment variables.

It is built once at the edge (CLI, Celery app, tests) and passed down; no other
module reads the environment.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kandinsky_batch.redis_client import redact
from kandinsky_batch.schema import MAX_SIDE, Mode

DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-1-prior"
DEFAULT_DECODER = "kandinsky-community/kandinsky-2-1"
DEFAULT_INPAINT = "kandinsky-community/kandinsky-2-1-inpaint"
ENV_PREFIX = "KANDINSKY_BATCH_"
REDIS_SCHEMES = ("redis", "rediss")
# Values never shown in a message about a bad setting.
SECRET_FIELDS = frozenset({"api_key", "s3_secret_access_key"})
# What a pattern allows, in words: pydantic would show the regular expression.
PATTERN_WORDS = {
    "device": "auto, cpu, cuda, cuda:N or mps",
    "key_prefix": "letters, digits, '_', '.' and '-'",
    "queue_prefix": "letters, digits, '_', '.' and '-'",
}
NUMBER_ERRORS = frozenset(
    {
        "int_parsing",
        "int_from_float",
        "int_type",
        "float_parsing",
        "float_type",
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "multiple_of",
    }
)


def _split_csv(value: object) -> object:
    """Accept `a,b,c` from the environment as well as a real list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Everything an operator can set; each field is `KANDINSKY_BATCH_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="KANDINSKY_BATCH_", extra="ignore", frozen=True)

    # Where things live.
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_url: str = "file:///tmp/kandinsky-batch"
    key_prefix: str = Field("kb", pattern=r"^[A-Za-z0-9_.-]+$")
    queue_prefix: str = Field("kandinsky_batch", pattern=r"^[A-Za-z0-9_.-]+$")

    # S3-compatible storage (used when storage_url is s3://bucket/prefix).
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_max_attempts: int = Field(5, ge=1, le=20)
    presign_expiry_s: int = Field(7 * 24 * 3600, ge=1, le=7 * 24 * 3600)

    # Models: a Hugging Face hub id or a local diffusers folder.
    prior_model: str = DEFAULT_PRIOR
    decoder_model: str = DEFAULT_DECODER
    inpaint_model: str = DEFAULT_INPAINT
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+|mps)$")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    cpu_offload: bool = False
    torch_threads: int = Field(0, ge=0)  # 0: torch's default; 1 is fastest for the tiny model on CPU
    memory_budget_mb: int = Field(0, ge=0)  # 0: keep every decoder loaded
    # GPU speed options (worker/acceleration.py); each keeps images within rounding of the default.
    compile: Literal["none", "unet", "all"] = "none"  # torch.compile the UNet, or UNet and MoVQ decode
    # torch.compile's backend: inductor generates the fast code; aot_eager and eager only trace
    # (the same graphs, buckets and recompiles in seconds: for finding a compile problem).
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    decode_in_store: Literal["auto", "on", "off"] = "auto"  # MoVQ decoding in the storing thread (auto: CPU)
    channels_last: Literal["auto", "true", "false"] = "auto"  # auto: on for cuda, off elsewhere
    tf32: bool = True  # TF32 matmuls and convolutions, on CUDA compute capability 8.0 and later

    # What a worker serves and how it batches.
    modes: Annotated[list[Mode], NoDecode] = Field(default_factory=lambda: list(Mode))
    max_batch_size: int = Field(8, ge=1, le=64)
    max_pending_images: int = Field(16, ge=1)  # generated images waiting to be stored, at most
    max_side: int = Field(1024, ge=64, le=MAX_SIDE, multiple_of=64)
    worker_name: str = ""
    ready_file: Path = Path("/tmp/kandinsky-batch-worker.ready")
    progress_interval_s: float = Field(0.5, ge=0)
    shutdown_grace_s: float = Field(120.0, ge=0)

    # Delivery.
    # Celery's task and worker events and its remote control: what Flower shows and does. Off, a
    # worker holds 4 Redis connections at most and sends under one command a second while idle.
    celery_events: bool = False
    celery_gossip: bool = False  # Celery's gossip between workers (needs CELERY_EVENTS): unused here
    celery_mingle: bool = False  # Celery's start-up sync of revoked tasks with the other workers
    chunk_size: int = Field(64, ge=1, le=10_000)
    queue_high_water: int = Field(10_000, ge=1)
    max_attempts: int = Field(3, ge=1)
    lease_ttl_s: float = Field(60.0, ge=1)
    max_retries: int = Field(10, ge=0)  # transient errors (storage down) before a job fails
    upload_retry_window_s: float = Field(300.0, ge=0)
    job_time_limit_s: int = Field(3600, ge=10)
    retry_backoff_s: float = Field(2.0, gt=0)
    retry_backoff_max_s: float = Field(300.0, gt=0)
    job_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    visibility_timeout_s: int = Field(4 * 3600, ge=60)

    # Input images (img2img, inpaint, interpolate).
    input_roots: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    max_input_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_input_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    allow_https_inputs: bool = False

    # Outputs.
    output_format: Literal["png", "webp", "jpeg"] = "png"
    output_quality: int = Field(95, ge=1, le=100)
    clip_score: bool = True  # score each image against its prompt with the prior's CLIP encoders
    # What a GPU-hour of generation costs (any currency): each stored job's metadata, its batch,
    # its tenant's usage and the worker's metrics then add a cost to its GPU-seconds.
    cost_per_gpu_hour: float | None = Field(None, ge=0)

    # The HTTP API server.
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    api_workers: int = Field(1, ge=1, le=64)
    api_wait_max_s: float = Field(60.0, ge=0, le=60)  # the most `Prefer: wait=N` waits
    api_max_body_bytes: int = Field(64 * 1024**2, ge=1024)  # one request, except batch uploads
    api_max_upload_bytes: int = Field(2 * 1024**3, ge=1024)  # one JSONL batch upload
    api_access_log: bool = False  # one log line per request (off: at 1000 req/s it is most of the log)
    api_metrics: bool = True  # serve the queue metrics at /metrics (no key: queue sizes only)
    # Connections: a request's line and headers must arrive within the header timeout (slow
    # senders hold no connection open); past the connection limit new requests get 503.
    api_header_timeout_s: float = Field(10.0, gt=0, le=300)
    api_max_header_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024**2)  # headers incomplete past it: 431
    api_keep_alive_s: int = Field(5, ge=1, le=300)  # an idle keep-alive connection is closed after it
    api_max_connections: int = Field(1000, ge=1)  # per API process
    # Long requests, per API process: past a tenant's share of uploads or event streams, 429;
    # past its share of `Prefer: wait`, the job is answered at once (202) without waiting.
    api_uploads: int = Field(16, ge=1, le=256)  # batch uploads at once, every tenant's together
    api_uploads_per_tenant: int = Field(4, ge=1)
    api_streams_per_tenant: int = Field(20, ge=1)  # `/v1/batches/{id}/events` streams
    api_waits_per_tenant: int = Field(50, ge=1)  # `Prefer: wait` requests waiting
    api_health_timeout_s: float = Field(3.0, gt=0, le=60)  # /healthz: 503 if the threads are stuck this long

    # Webhooks, sent by a dispatcher in the API process.
    webhooks: bool = True  # run the dispatcher in the API process
    webhook_allow_loopback: bool = False  # let receivers on loopback addresses through (tests)
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)
    webhook_retry_base_s: float = Field(5.0, gt=0)  # the first retry's delay, doubled each time
    webhook_retry_max_s: float = Field(3600.0, gt=0)  # the longest delay between two tries
    webhook_give_up_s: float = Field(24 * 3600.0, gt=0)  # after this long, a delivery is dead
    webhook_concurrency: int = Field(8, ge=1, le=256)  # deliveries in flight at once

    # Observability. A worker serves Prometheus metrics on METRICS_HOST:METRICS_PORT (0: off); the
    # host defaults to every interface, since the port exists to be scraped from outside the pod.
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    # Log lines: text for a person at a terminal, JSON (one object per line) for a log pipeline;
    # auto picks text when stderr is a terminal, JSON otherwise.
    log_format: Literal["auto", "json", "text"] = "auto"

    # The CLI as a client of that API: with both set, its job commands need no Redis or storage.
    api_url: str | None = None
    api_key: SecretStr | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        """Refused here, so no entry point gets as far as a redis-py or kombu traceback."""
        scheme, sep, _ = value.partition("://")
        if not sep or scheme.lower() not in REDIS_SCHEMES:
            raise ValueError(
                "not a Redis URL: use redis://[:password@]host[:port][/db], or rediss:// for TLS"
            )
        return value

    @field_validator("modes", "input_roots", mode="before")
    @classmethod
    def _modes_from_csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("compile", "channels_last", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        """`TRUE` or `Unet` from the environment mean what their lower case means; a bool its name."""
        if isinstance(value, bool):
            return str(value).lower()
        return value.strip().lower() if isinstance(value, str) else value

    def as_env(self) -> dict[str, str]:
        """These settings as `KANDINSKY_BATCH_*` variables, for a child process (worker, probe).

        The API URL and key are left out: a child serves Redis itself, and the key stays here.
        """
        env = {}
        for name, value in self.model_dump(mode="json", exclude={"api_url", "api_key"}).items():
            if value is not None:
                text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
                env[f"KANDINSKY_BATCH_{name.upper()}"] = text
        return env

    def queue_for(self, mode: Mode) -> str:
        """The Celery queue (a Redis list) that carries jobs of one mode."""
        return f"{self.queue_prefix}.{mode.value}"


def describe_settings_error(exc: ValidationError) -> str:
    """One line per bad variable: its name, its value (credentials masked) and what is allowed.

    Every entry point prints this instead of pydantic's dump, which names fields rather than
    the variables a person sets, and shows a Redis URL's password.
    """
    values: dict[str, list[str]] = {}  # the bad value of each variable, or a list's bad items
    items: set[str] = set()  # the variables that are lists (`MODES=text2img,foo`)
    allowed: dict[str, str] = {}
    for error in exc.errors():
        loc = error.get("loc", ())
        name = str(loc[0]) if loc else ""
        var = f"{ENV_PREFIX}{name.upper()}"
        shown = _shown(name, error.get("input"))
        if len(loc) > 1:
            items.add(var)
        if shown not in values.setdefault(var, []):
            values[var].append(shown)
        allowed.setdefault(var, _allowed(name, error))
    lines = []
    for var, shown_values in values.items():
        if var in items:
            where = f"{var}: item{'s' if len(shown_values) > 1 else ''} {', '.join(shown_values)}"
        else:
            where = f"{var}={shown_values[0]}"
        lines.append(f"invalid setting {where}: {allowed[var]}")
    return "\n".join(lines)


def load_settings() -> Settings:
    """Settings from the environment for entry points outside the CLI (Flower, an API worker process).

    A bad variable prints its one line and exits 2, as the CLI does.
    """
    try:
        return Settings()
    except ValidationError as exc:
        print(describe_settings_error(exc), file=sys.stderr)
        raise SystemExit(2) from None


def _shown(name: str, value: Any) -> str:
    if name in SECRET_FIELDS:
        return "***"
    text = redact(str(value)) if name.endswith("_url") else str(value)
    return repr(text if len(text) <= 80 else f"{text[:77]}...")


def _allowed(name: str, error: Any) -> str:
    """What the variable may be: in words where pydantic's message would be a pattern or a type name."""
    kind = error.get("type", "")
    if kind == "string_pattern_mismatch" and name in PATTERN_WORDS:
        return f"should be {PATTERN_WORDS[name]}"
    field = Settings.model_fields.get(name)
    if field is not None and kind in NUMBER_ERRORS and field.annotation in (int, float):
        number = "a whole number" if field.annotation is int else "a number"
        return f"should be {number}{_bounds(field.metadata)}"
    if kind == "bool_parsing":
        return "should be true or false (or 1/0, yes/no, on/off)"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return message.replace("Input should be", "should be", 1)


def _bounds(metadata: list[Any]) -> str:
    """`metadata` (annotated_types' Ge, Le, ...) in words: ` from 1 to 10000`, ` above 0`."""
    low = next((f"{m.ge}" for m in metadata if getattr(m, "ge", None) is not None), None)
    above = next((f"{m.gt}" for m in metadata if getattr(m, "gt", None) is not None), None)
    high = next((f"{m.le}" for m in metadata if getattr(m, "le", None) is not None), None)
    step = next((f"{m.multiple_of}" for m in metadata if getattr(m, "multiple_of", None)), None)
    words = ""
    if low is not None and high is not None:
        words = f" from {low} to {high}"
    elif low is not None:
        words = f" of at least {low}"
    elif above is not None:
        words = f" above {above}" + (f" and at most {high}" if high is not None else "")
    elif high is not None:
        words = f" of at most {high}"
    return words + (f", a multiple of {step}" if step else "")
