"""The diffusers calls for one micro-batch of compatible images, per mode.

Every image gets its own CPU generator seeded from its job's seed and image
index, so an image is the same whether it ran alone or inside a batch (up to
batched-matmul rounding, see the README) and on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from kandinsky_batch.schema import JobSpec, Mode, image_seed
from worker.pipelines import PipelineCache


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


def generate(cache: PipelineCache, items: list[Item], on_step: StepCallback) -> list[Image.Image]:
    """Run one pipeline call for compatible `items`; one PIL image per item, in order.

    A compiled decoder has a graph per batch size, so the batch is padded up to its bucket with
    copies of the last item (each with its own generator, as every item) and their images are
    dropped; without compile, nothing is padded.
    """
    wanted = len(items)
    padded = items + [items[-1]] * (cache.batch_size_for(wanted) - wanted)
    return _generate(cache, padded, on_step)[:wanted]


def _generate(cache: PipelineCache, items: list[Item], on_step: StepCallback) -> list[Image.Image]:
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
        "callback": lambda step, _t, _latents: on_step(step + 1, total),
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
    images: list[Image.Image] = pipe(**common).images
    return images
