"""A micro-batch's diffusers call, split in halves when it fails, so a failure stays with its images.

Out of memory: free the cache and retry in halves down to one image; only then does that image fail
with `out_of_memory`. Any other unexpected error: retry in halves too, so only the images that fail
alone get `internal_error` (a micro-batch mixes jobs of many messages, and one job's bad parameter
mix must not fail its batch-mates). Control flow (cancel, lost leases, shutdown) is never retried.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

import torch
from PIL import Image

from kandinsky_batch.errors import ControlFlow, InternalError, KandinskyBatchError, OutOfMemory
from worker import metrics
from worker.generate import Item, Latent, StepCallback
from worker.pipelines import PipelineCache

log = logging.getLogger(__name__)

Generate = Callable[[PipelineCache, list[Item], StepCallback], list[Image.Image | Latent]]
Images = list[
    Image.Image | KandinskyBatchError | Latent
]  # an image (maybe still latent) or its error, per item


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_splitting(
    generate: Generate, cache: PipelineCache, items: list[Item], on_step: StepCallback
) -> Images:
    """`generate(cache, items, on_step)`, retried in halves on failure; an image or an error per item."""
    try:
        started = time.perf_counter()
        images: Images = list(generate(cache, items, on_step))
        metrics.generated(items[0].spec.mode.value, len(items), time.perf_counter() - started)
        return images
    except ControlFlow:
        raise
    except Exception as exc:
        oom = is_oom(exc)
        if oom:
            free_memory()
        if len(items) == 1:
            if oom:
                log.warning("out of memory on a single image of %s", items[0].job_id)
                spec = items[0].spec
                return [OutOfMemory(f"out of memory even for one {spec.width}x{spec.height} image")]
            log.error("generating an image of %s failed", items[0].job_id, exc_info=exc)
            return [InternalError(f"{type(exc).__name__}: {exc}")]
        half = len(items) // 2
        what = "out of memory" if oom else f"failed ({exc})"
        log.warning("%d images: %s; retrying as %d + %d", len(items), what, half, len(items) - half)
        return generate_splitting(generate, cache, items[:half], on_step) + generate_splitting(
            generate, cache, items[half:], on_step
        )
