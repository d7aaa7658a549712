"""DECODE_IN_STORE: the decoder call stops after its last denoising step and the storing thread
decodes the latents. The tiny models' real pipelines on the CPU: the pixels are exactly those of
the pipelines' own decode, in every decoder mode; a decode that fails fails only its images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from kandinsky_batch.errors import InternalError
from kandinsky_batch.schema import JobSpec, Mode
from tests.conftest import make_settings
from worker.generate import Inputs, Item, Latent, Undecoded, decoded, generate
from worker.pipelines import PipelineCache

TINY = {"height": 64, "width": 64, "num_inference_steps": 3, "prior_num_inference_steps": 2}


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def mask() -> Image.Image:
    data = np.zeros((64, 64), dtype=np.uint8)
    data[16:48, 16:48] = 255
    return Image.fromarray(data)


def items(mode: Mode) -> list[Item]:
    extra: dict[str, Any] = {}  # the spec names its inputs; the images themselves ride in `Inputs`
    if mode is not Mode.TEXT2IMG:
        extra["image"] = "file:///inputs/picture.png"
    if mode is Mode.IMG2IMG:
        extra["strength"] = 0.7
    if mode is Mode.INPAINT:
        extra["mask"] = "file:///inputs/mask.png"
    inputs = Inputs(image=picture(1), mask=mask() if mode is Mode.INPAINT else None)
    return [
        Item(f"j{i}", 0, JobSpec(prompt=f"a lantern {i}", seed=40 + i, mode=mode, **TINY, **extra), inputs)
        for i in range(3)
    ]


@pytest.fixture(scope="module")
def caches(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, PipelineCache]:
    made = {}
    for choice in ("on", "off"):
        settings = make_settings(
            "redis://unused", tiny_models, tmp_path_factory.mktemp(choice), decode_in_store=choice
        )
        made[choice] = PipelineCache(settings)
    return made


def test_auto_decodes_in_the_storing_thread_on_the_cpu_only(tiny_models: Path, tmp_path: Path):
    assert PipelineCache(make_settings("redis://unused", tiny_models, tmp_path)).decode_in_store
    assert not PipelineCache(
        make_settings("redis://unused", tiny_models, tmp_path, compile="all")
    ).decode_in_store


@pytest.mark.parametrize("mode", [Mode.TEXT2IMG, Mode.IMG2IMG, Mode.INPAINT])
def test_decoding_later_gives_the_pixels_the_pipeline_gives(caches: dict[str, PipelineCache], mode: Mode):
    steps: list[tuple[int, int]] = []
    later = generate(caches["on"], items(mode), lambda done, total: steps.append((done, total)))
    assert all(isinstance(image, Latent) for image in later)
    assert steps[-1][0] == steps[-1][1]  # every denoising step ran, and was reported, before the stop
    now = generate(caches["off"], items(mode), lambda _d, _t: None)
    assert all(isinstance(image, Image.Image) for image in now)
    for a, b in zip(decoded(later), now, strict=True):
        assert isinstance(a, Image.Image) and isinstance(b, Image.Image)
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_decode_that_fails_fails_its_images_and_no_other(caches: dict[str, PipelineCache]):
    good = generate(caches["on"], items(Mode.TEXT2IMG)[:1], lambda _d, _t: None)
    broken = Undecoded(caches["on"].text2img(), torch.zeros(2, 3, 5, 5))  # not MoVQ latents: it raises
    out = decoded([*good, Latent(broken, 0), Latent(broken, 1), InternalError("already failed")])
    assert isinstance(out[0], Image.Image)
    assert all(isinstance(e, InternalError) and "decoding the image" in e.message for e in out[1:3])
    assert isinstance(out[3], InternalError) and out[3].message == "already failed"
