"""The diffusers calls for one micro-batch of compatible images, per mode.

Every image gets its own CPU generator seeded from its job's seed and image
index, so an image is the same whether it ran alone or inside a batch (up to
batched-matmul rounding, see docs/reproducibility.md) and on any device.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from kandinsky_batch.errors import InternalError, KandinskyBatchError
from kandinsky_batch.schema import JobSpec, Mode, image_seed
from worker.pipelines import PipelineCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSource:
    """Where one input image came from: the spec field, its URI, the sha256 of the bytes read.

    `data` holds the bytes of an inline `data:` input (to be stored once per batch), else None.
    """

    field: str
    uri: str
    sha256: str
    ext: str
    data: bytes | None = None


@dataclass(frozen=True)
class Inputs:
    """Input images of one job, already fetched and checked."""

    image: Image.Image | None = None
    mask: Image.Image | None = None
    conditions: list[str | Image.Image] = field(default_factory=list)
    sources: list[InputSource] = field(default_factory=list)


@dataclass(frozen=True)
class Item:
    """One image to make: a job's spec, which of its images, and its inputs."""

    job_id: str
    index: int
    spec: JobSpec
    inputs: Inputs

    @property
    def seed(self) -> int:
        return image_seed(self.spec.seed or 0, self.index)


StepCallback = Callable[[int, int], None]  # (steps done, steps in all)


def compat_key(spec: JobSpec) -> tuple[Any, ...]:
    """Jobs with equal keys can share one pipeline call."""
    return (
        spec.mode,
        spec.height,
        spec.width,
        spec.num_inference_steps,
        spec.prior_num_inference_steps,
        spec.guidance_scale,
        spec.prior_guidance_scale,
        spec.negative_prompt is None,
        spec.strength if spec.mode is Mode.IMG2IMG else None,
    )


def decoder_steps(spec: JobSpec) -> int:
    """Denoising steps the decoder really runs (img2img skips the first 1 - strength)."""
    if spec.mode is Mode.IMG2IMG:
        return max(1, min(int(spec.num_inference_steps * spec.strength), spec.num_inference_steps))
    return spec.num_inference_steps


def _generators(items: list[Item]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(it.seed) for it in items]


def _text_prior(cache: PipelineCache, items: list[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    spec = items[0].spec
    negatives = None if spec.negative_prompt is None else [it.spec.negative_prompt or "" for it in items]
    generators = _generators(items)
    if negatives is not None:
        # The prior runs prompts and negatives as one batch of 2N: one generator each.
        generators += _generators(items)
    out = cache.prior()(
        prompt=[it.spec.prompt for it in items],
        negative_prompt=negatives,
        num_inference_steps=spec.prior_num_inference_steps,
        guidance_scale=spec.prior_guidance_scale,
        generator=generators,
    )
    return out.image_embeds, out.negative_image_embeds


def _interpolation_prior(cache: PipelineCache, items: list[Item]) -> tuple[torch.Tensor, torch.Tensor]:
    embeds, negatives = [], []
    for it, gen in zip(items, _generators(items), strict=True):
        conditions = it.spec.conditions or []
        out = cache.prior().interpolate(
            it.inputs.conditions,
            [c.weight for c in conditions],
            num_inference_steps=it.spec.prior_num_inference_steps,
            guidance_scale=it.spec.prior_guidance_scale,
            negative_prompt=it.spec.negative_prompt or "",
            generator=gen,
        )
        embeds.append(out.image_embeds)
        negatives.append(out.negative_image_embeds)
    return torch.cat(embeds), torch.cat(negatives)


class Undecoded:
    """A micro-batch denoised but not yet decoded: MoVQ turns its latents into images later.

    On the CPU, decoding is a fifth of a tiny-model image's time; the storing thread decodes while
    the next micro-batch denoises, on another core. The decode is the pipelines' own last lines,
    so the pixels are the same as theirs (tested).
    """

    def __init__(self, pipe: Any, latents: torch.Tensor) -> None:
        self.pipe = pipe
        self.latents = latents
        self._images: list[Image.Image] | None = None
        self._failure: Exception | None = None  # a decode that failed fails each image once, not again
        self._lock = threading.Lock()

    def images(self) -> list[Image.Image]:
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._images is None:
                try:
                    with torch.no_grad():  # grad mode is per thread: the pipelines' call has it off
                        image = self.pipe.movq.decode(self.latents, force_not_quantize=True)["sample"]
                        image = (image * 0.5 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
                except Exception as exc:
                    self._failure = exc
                    raise
                self._images = list(self.pipe.numpy_to_pil(image))
                self.latents = torch.empty(0)  # the images are kept; the latents are not needed
            return self._images


@dataclass(frozen=True)
class Latent:
    """Image `index` of an `Undecoded` micro-batch, in place of the image until it is decoded."""

    batch: Undecoded
    index: int

    def image(self) -> Image.Image:
        return self.batch.images()[self.index]


def decoded(
    images: list[Image.Image | KandinskyBatchError | Latent],
) -> list[Image.Image | KandinskyBatchError]:
    """Every `Latent` decoded (each micro-batch once); a decode that fails fails its images."""
    out: list[Image.Image | KandinskyBatchError] = []
    failed: set[int] = set()  # micro-batches whose decode failed, logged once each
    for image in images:
        if not isinstance(image, Latent):
            out.append(image)
            continue
        try:
            out.append(image.image())
        except Exception as exc:  # the image fails with the reason; the worker and the other images go on
            if id(image.batch) not in failed:
                failed.add(id(image.batch))
                log.error("decoding a micro-batch failed", exc_info=exc)
            out.append(InternalError(f"decoding the image: {type(exc).__name__}: {exc}"))
    return out


class _Denoised(Exception):  # not an error: the way out of a pipeline call before its decode
    def __init__(self, latents: torch.Tensor) -> None:
        super().__init__("denoised")
        self.latents = latents


def generate(cache: PipelineCache, items: list[Item], on_step: StepCallback) -> list[Image.Image | Latent]:
    """Run one pipeline call for compatible `items`; one image per item, in order.

    With `cache.decode_in_store`, each is a `Latent`: the decoder call stops after its last
    denoising step, and whoever stores the images decodes them (`Undecoded`).
    A compiled decoder has a graph per batch size, so the batch is padded up to its bucket with
    copies of the last item (each with its own generator, as every item) and their images are
    dropped; without compile, nothing is padded.
    """
    wanted = len(items)
    padded = items + [items[-1]] * (cache.batch_size_for(wanted) - wanted)
    return _generate(cache, padded, on_step)[:wanted]


def _generate(cache: PipelineCache, items: list[Item], on_step: StepCallback) -> list[Image.Image | Latent]:
    spec = items[0].spec
    if spec.mode is Mode.INTERPOLATE:
        image_embeds, negative_embeds = _interpolation_prior(cache, items)
    else:
        image_embeds, negative_embeds = _text_prior(cache, items)
    total = decoder_steps(spec)
    common: dict[str, Any] = {
        "prompt": [it.spec.prompt for it in items],
        "negative_prompt": None
        if spec.negative_prompt is None
        else [it.spec.negative_prompt for it in items],
        "image_embeds": image_embeds,
        "negative_image_embeds": negative_embeds,
        "height": spec.height,
        "width": spec.width,
        "num_inference_steps": spec.num_inference_steps,
        "guidance_scale": spec.guidance_scale,
        "generator": _generators(items),
        "callback_steps": 1,
        "output_type": "pil",
    }
    if spec.mode is Mode.IMG2IMG:
        pipe: Any = cache.img2img()
        common.update(image=[it.inputs.image for it in items], strength=spec.strength)
    elif spec.mode is Mode.INPAINT:
        pipe = cache.inpaint()
        common.update(image=[it.inputs.image for it in items], mask_image=[it.inputs.mask for it in items])
    else:
        pipe = cache.text2img()
    defer = cache.decode_in_store

    def callback(step: int, t: Any, latents: torch.Tensor) -> None:
        on_step(step + 1, total)
        if defer and t == pipe.scheduler.timesteps[-1]:  # the last step (img2img runs a suffix of them)
            raise _Denoised(latents)

    try:
        images: list[Image.Image | Latent] = pipe(**common, callback=callback).images
    except _Denoised as done:
        undecoded = Undecoded(pipe, done.latents)
        return [Latent(undecoded, k) for k in range(len(items))]
    return images
