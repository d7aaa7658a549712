"""The worker's Prometheus metrics: every definition here, updated where things happen, served on
METRICS_PORT by prometheus-client's own HTTP server in a thread.

The names and labels are a contract (alerts, dashboards and autoscaling read them): never rename
one. Everything is in-process (a solo pool is one process): an update is a lock and an add, with
no Redis call, so a denoising step costs nothing measurable. GPU memory and utilization are read
at scrape time by a collector that yields nothing off CUDA, so a CPU worker exports no `gpu_*`
series at all rather than zeros.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Literal
from wsgiref.simple_server import WSGIServer

import torch
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kandinsky_batch.schema import Mode

log = logging.getLogger(__name__)

Outcome = Literal["succeeded", "failed", "canceled", "handed_back"]
# shutdown: a stopping worker gave its jobs back; storage_retry: a storage outage did;
# lease_expired / orphaned: this worker recovered a job whose worker died (an expired lease, or
# running with no live lease of its own) and queued it again.
Reason = Literal["shutdown", "storage_retry", "lease_expired", "orphaned"]
OUTCOMES: tuple[Outcome, ...] = ("succeeded", "failed", "canceled", "handed_back")
REASONS: tuple[Reason, ...] = ("shutdown", "storage_retry", "lease_expired", "orphaned")
PIPELINES = ("prior", "decoder", "inpaint")
# Tenants get a label of their own up to this many per worker process; any later one is counted
# under OTHER_TENANT (no tenant name has parentheses), so a series count stays bounded.
TENANT_LABELS_MAX = 50
OTHER_TENANT = "(other)"

disable_created_metrics()  # no `_created` twin of every series: nothing here reads them
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

JOBS = Counter(
    "kandinsky_batch_jobs",
    "Jobs this worker finished or gave back, by outcome; `code` is the error code of a failure.",
    ["mode", "outcome", "code"],
    registry=REGISTRY,
)
IMAGES = Counter("kandinsky_batch_images", "Images stored.", ["mode"], registry=REGISTRY)
GENERATION = Histogram(
    "kandinsky_batch_generation_seconds",
    "One micro-batch's diffusers call (prior and decoder).",
    ["mode"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
IMAGE = Histogram(
    "kandinsky_batch_image_seconds",
    "Seconds per image: a micro-batch's diffusers call divided by its images (one sample per image).",
    ["mode"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120),
    registry=REGISTRY,
)
UPLOAD = Histogram(
    "kandinsky_batch_upload_seconds",
    "Storing one job's outputs and metadata, retries included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "kandinsky_batch_queue_wait_seconds",
    "From a job's creation (its submit) to this start of it.",
    ["mode"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
    registry=REGISTRY,
)
MICRO_BATCH = Histogram(
    "kandinsky_batch_micro_batch_images",
    "Images per micro-batch (compatible jobs generated in one call).",
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
PIPELINE_LOADS = Counter(
    "kandinsky_batch_pipeline_loads", "Pipelines loaded from their weights.", ["pipeline"], registry=REGISTRY
)
REDELIVERIES = Counter(
    "kandinsky_batch_redeliveries",
    "Jobs this worker handed back or recovered for another run, by reason.",
    ["reason"],
    registry=REGISTRY,
)
# The GPU-seconds of the batch view and /v1/usage, named for the device (GPU or CPU) that ran them:
# the `gpu_*` series stay a CUDA device's own readings, absent on a CPU.
DEVICE_SECONDS = Counter(
    "kandinsky_batch_device_seconds",
    "GPU-seconds of stored jobs: each job its images' share of its micro-batch's generate call "
    f"(not idle or storing time); `tenant` is '' for none, {OTHER_TENANT!r} past {TENANT_LABELS_MAX} tenants.",
    ["mode", "tenant"],
    registry=REGISTRY,
)
COST = Counter(
    "kandinsky_batch_cost",
    "What those GPU-seconds cost at COST_PER_GPU_HOUR (absent without it); labels as device_seconds.",
    ["mode", "tenant"],
    registry=REGISTRY,
)
BUSY = Gauge("kandinsky_batch_worker_busy", "1 while a task runs, else 0.", registry=REGISTRY)
INFO = Gauge(
    "kandinsky_batch_worker_info",
    "Always 1; the labels say what this worker is.",
    ["worker", "modes", "device", "dtype", "version"],
    registry=REGISTRY,
)
LAST_PROGRESS = Gauge(
    "kandinsky_batch_last_progress_timestamp_seconds",
    "Unix time of the last denoising step or task start.",
    registry=REGISTRY,
)


def job_done(mode: str, outcome: Outcome, code: str = "", n: int = 1) -> None:
    """`n` jobs of `mode` ended (or were given back) on this worker as `outcome`."""
    if n:
        JOBS.labels(mode, outcome, code if outcome == "failed" else "").inc(n)


_TENANTS: set[str] = set()


def tenant_label(tenant: str) -> str:
    """A tenant as its own label while this worker has seen at most TENANT_LABELS_MAX of them."""
    if tenant in _TENANTS or not tenant:
        return tenant
    if len(_TENANTS) < TENANT_LABELS_MAX:
        _TENANTS.add(tenant)
        return tenant
    return OTHER_TENANT


def spent(mode: str, tenant: str, gpu_seconds: float, cost: float | None) -> None:
    """A stored job's GPU share, and its cost where there is one (as the store counted them)."""
    label = tenant_label(tenant)
    DEVICE_SECONDS.labels(mode, label).inc(gpu_seconds)
    if cost is not None:
        COST.labels(mode, label).inc(cost)


def redelivered(reason: Reason, n: int = 1) -> None:
    if n:
        REDELIVERIES.labels(reason).inc(n)


def progressed() -> None:
    LAST_PROGRESS.set(time.time())


def generated(mode: str, images: int, seconds: float) -> None:
    """One diffusers call made `images` images in `seconds`."""
    GENERATION.labels(mode).observe(seconds)
    per_image = IMAGE.labels(mode)
    for _ in range(images):
        per_image.observe(seconds / images)


def describe_worker(name: str, modes: Iterable[Mode], device: torch.device, dtype: torch.dtype) -> None:
    """Set worker_info and start every label set at 0, so a rate is defined before the first event."""
    served = [m.value for m in modes]
    INFO.labels(name, ",".join(served), str(device), str(dtype).removeprefix("torch."), _version()).set(1)
    for mode in served:
        IMAGES.labels(mode)
        GENERATION.labels(mode)
        IMAGE.labels(mode)
        QUEUE_WAIT.labels(mode)
        DEVICE_SECONDS.labels(mode, "")
        for outcome in OUTCOMES:
            if outcome != "failed":  # a failure's series appears with its code
                JOBS.labels(mode, outcome, "")
    for pipeline in PIPELINES:
        PIPELINE_LOADS.labels(pipeline)
    for reason in REASONS:
        REDELIVERIES.labels(reason)
    BUSY.set(0)


def _version() -> str:
    try:
        return metadata.version("kandinsky-batch")
    except metadata.PackageNotFoundError:
        return "unknown"


# -- the GPU, read at scrape time ------------------------------------------------------


@dataclass(frozen=True)
class GpuReading:
    """One device's figures; the NVML ones are None where NVML does not load or answer."""

    allocated_bytes: int
    reserved_bytes: int
    used_bytes: int | None = None
    utilization_ratio: float | None = None


def gpu_families(device: str, reading: GpuReading | None) -> list[Metric]:
    """The gpu_* families for one reading: none at all without one (not on CUDA)."""
    if reading is None:
        return []
    values: list[tuple[str, str, float | None]] = [
        (
            "kandinsky_batch_gpu_memory_allocated_bytes",
            "Bytes of tensors torch holds on the device.",
            reading.allocated_bytes,
        ),
        (
            "kandinsky_batch_gpu_memory_reserved_bytes",
            "Bytes torch's caching allocator reserved on the device.",
            reading.reserved_bytes,
        ),
        (
            "kandinsky_batch_gpu_utilization_ratio",
            "Share of NVML's last sample period in which a kernel ran (0..1).",
            reading.utilization_ratio,
        ),
        (
            "kandinsky_batch_gpu_memory_used_bytes",
            "Device memory in use by every process, as NVML counts it.",
            reading.used_bytes,
        ),
    ]
    families: list[Metric] = []
    for name, text, value in values:
        if value is not None:
            family = GaugeMetricFamily(name, text, labels=["device"])
            family.add_metric([device], float(value))
            families.append(family)
    return families


class GpuCollector(Collector):
    """This worker's CUDA device at every scrape: torch's allocator, and NVML where it loads."""

    def __init__(self, device: torch.device) -> None:
        self.device: torch.device | None = None
        if device.type == "cuda" and torch.cuda.is_available():
            index = device.index if device.index is not None else torch.cuda.current_device()
            self.device = torch.device("cuda", index)
        self.nvml = self.device is not None and _nvml_loads()

    def read(self) -> GpuReading | None:
        if self.device is None:
            return None
        used, ratio = None, None
        if self.nvml:
            try:
                ratio = torch.cuda.utilization(self.device) / 100
                used = int(torch.cuda.device_memory_used(self.device))
            except Exception as exc:  # a driver that stops answering must not break the scrape
                log.warning("NVML stopped answering (%s): no GPU utilization from now on", exc)
                self.nvml = False
        return GpuReading(
            torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device), used, ratio
        )

    def describe(self) -> Iterable[Metric]:
        return []  # registering must not read the device

    def collect(self) -> Iterator[Metric]:
        yield from gpu_families(str(self.device), self.read())


def _nvml_loads() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # not installed, no driver library, ...
        log.info("NVML does not load (%s): no GPU utilization metrics", exc)
        return False
    return True


_WATCHED: list[GpuCollector] = []


def watch_gpu(device: torch.device) -> None:
    """Export this device's gpu_* metrics at every scrape (nothing off CUDA); once per process."""
    if not _WATCHED:
        _WATCHED.append(GpuCollector(device))
        REGISTRY.register(_WATCHED[0])


# -- serving ---------------------------------------------------------------------------


class MetricsServer:
    """prometheus-client's HTTP server for REGISTRY, in a daemon thread; `stop()` closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.server: WSGIServer
        self.thread: threading.Thread
        self.server, self.thread = start_http_server(port, host, registry=REGISTRY)
        log.info("metrics on http://%s:%d/metrics", host, port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
