"""A CLIP score per generated image, with the prior's CLIP encoders that are loaded anyway.

The prior pipeline already holds a CLIP text encoder and image encoder (with projections), so
scoring costs one batched forward pass per micro-batch and no extra weights. The score is
torchmetrics' CLIPScore: max(100 * cosine(image embedding, prompt embedding), 0). Scoring is an
extra: any failure is logged and gives no scores, never a failed job.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from PIL import Image

from worker.pipelines import PipelineCache

log = logging.getLogger(__name__)


def similarities(
    prior: Any, images: list[Image.Image], prompts: list[str], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """100 * cosine(image, prompt) per pair, not clamped, in one batched pass of each encoder."""
    tokens = prior.tokenizer(
        prompts,
        padding="max_length",
        max_length=prior.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    pixels = prior.image_processor([img.convert("RGB") for img in images], return_tensors="pt").pixel_values
    with torch.inference_mode():
        text = prior.text_encoder(
            input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
        ).text_embeds
        image = prior.image_encoder(pixel_values=pixels.to(device=device, dtype=dtype)).image_embeds
        cosine = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
    return 100 * cosine.cpu()


def clip_scores(
    prior: Any, images: list[Image.Image], prompts: list[str], device: torch.device, dtype: torch.dtype
) -> list[float]:
    """One CLIPScore per (image, prompt) pair: the similarity clamped at 0, to 4 decimals."""
    return [round(float(s), 4) for s in similarities(prior, images, prompts, device, dtype).clamp(min=0)]


def score_micro_batch(
    cache: PipelineCache, images: list[Image.Image | Any], prompts: list[str | None]
) -> list[float | None]:
    """Scores aligned with `images`: None for an image with no prompt, no image, or on any failure."""
    pairs = [
        (i, img, prompt)
        for i, (img, prompt) in enumerate(zip(images, prompts, strict=True))
        if isinstance(img, Image.Image) and prompt
    ]
    out: list[float | None] = [None] * len(images)
    if not pairs:
        return out
    try:
        scores = clip_scores(
            cache.prior(), [img for _, img, _ in pairs], [p for _, _, p in pairs], cache.device, cache.dtype
        )
    except Exception:  # scoring must never fail a job
        log.warning("CLIP scoring failed; storing no scores", exc_info=True)
        return out
    for (i, _, _), score in zip(pairs, scores, strict=True):
        out[i] = score
    return out


def job_score(scores: list[float | None]) -> float | list[float | None] | None:
    """The metadata's `clip_score`: a number for a one-image job, else one per image (None: unscored)."""
    if len(scores) == 1:
        return scores[0]
    return None if all(s is None for s in scores) else scores
