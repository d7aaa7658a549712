"""The GPU options on the CPU with the tiny models: compile, channels_last, SDPA, bfloat16.

The buckets, the padding and "no recompile" are about which graphs dynamo makes, so they run on
the `aot_eager` backend: the same graphs, traced in seconds. torch.compile's inductor backend runs
here too (gcc), for one bucket: its generated code gives images within one level of 255 of the
plain pipeline's. (A cold inductor compile of the tiny UNet takes 30-50 s per batch size on a
2-core CPU.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnAddedKVProcessor, AttnProcessor
from torch._dynamo.utils import counters

from kandinsky_batch.schema import JobSpec, Mode
from tests.conftest import make_settings
from worker.acceleration import SDPA_PROCESSORS
from worker.generate import Inputs, Item, decoded, generate
from worker.pipelines import PipelineCache

# torch's own inductor imports torch.jit.script_method, deprecated by torch itself.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
BUCKETS = [1, 2, 4]  # MAX_BATCH_SIZE=4


def items(n: int, seed: int = 100) -> list[Item]:
    return [
        Item(f"j{i}", 0, JobSpec(prompt=f"a red fox {i}", seed=seed + i, **TINY), Inputs()) for i in range(n)
    ]


def pixels(cache: PipelineCache, batch: list[Item]) -> list[np.ndarray]:
    return [
        np.asarray(image, dtype=np.int16) for image in decoded(generate(cache, batch, lambda _d, _t: None))
    ]


def graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    return int(counters["stats"]["unique_graphs"])


@pytest.fixture(scope="module")
def cache_for(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., PipelineCache]:
    def build(**overrides: Any) -> PipelineCache:
        root = tmp_path_factory.mktemp("cache")
        return PipelineCache(make_settings("redis://unused", tiny_models, root, **overrides))

    return build


@pytest.fixture(scope="module")
def plain(cache_for: Callable[..., PipelineCache]) -> PipelineCache:
    cache = cache_for(max_batch_size=4)
    cache.warm([Mode.TEXT2IMG])
    return cache


@pytest.fixture(scope="module")
def compiled(cache_for: Callable[..., PipelineCache]) -> tuple[PipelineCache, int, float]:
    """A cache with a compiled (traced) UNet, warmed at the tests' size; the graphs and seconds its
    warm-up took."""
    cache = cache_for(compile="unet", compile_backend="aot_eager", max_batch_size=4)
    before, started = graphs(), time.perf_counter()
    cache.warm([Mode.TEXT2IMG], size=(64, 64))
    return cache, graphs() - before, time.perf_counter() - started


def test_inductors_code_gives_the_plain_pipelines_images(
    cache_for: Callable[..., PipelineCache], plain: PipelineCache
) -> None:
    # Given a UNet compiled by inductor for one bucket (MAX_BATCH_SIZE=1), warmed as a worker is
    cache = cache_for(compile="unet", max_batch_size=1)
    before = graphs()
    cache.warm([Mode.TEXT2IMG], size=(64, 64))
    assert cache.compiled_buckets == {"decoder": [1]} and graphs() == before + 1
    # Then its images are the plain pipeline's within one level, and running them compiles nothing more
    for seed in (100, 200):
        [got], [want] = pixels(cache, items(1, seed)), pixels(plain, items(1, seed))
        assert np.abs(got - want).max() <= 1  # measured: 1 level of 255 at most
    assert graphs() == before + 1


def test_the_warm_up_compiles_every_bucket(compiled: tuple[PipelineCache, int, float]) -> None:
    cache, new_graphs, seconds = compiled
    assert cache.compiled_buckets == {"decoder": BUCKETS}
    assert new_graphs == len(BUCKETS)  # one UNet graph per bucket, nothing else compiled
    assert 0 < cache.compile_seconds <= seconds


def test_a_padded_micro_batch_matches_the_plain_one_without_recompiling(
    compiled: tuple[PipelineCache, int, float], plain: PipelineCache
) -> None:
    cache, _, _ = compiled
    assert cache.batch_size_for(3) == 4 and plain.batch_size_for(3) == 3
    before = graphs()
    three = pixels(cache, items(3))
    # Three images come back, from the bucket-4 graph: a batch of 3 would have compiled a new one.
    assert len(three) == 3 and graphs() == before
    for got, want in zip(three, pixels(plain, items(3)), strict=True):
        assert np.abs(got - want).max() <= 1  # measured: 1 level at most, as batch 4 vs 3 without compile
    four = pixels(cache, items(4))
    again = pixels(cache, items(3))
    assert graphs() == before
    assert np.array_equal(again[2], three[2]) and np.abs(four[2] - three[2]).max() <= 1


def test_compile_off_runs_the_batch_as_it_is(plain: PipelineCache) -> None:
    # No padding: the same items give the bit-identical images of before, batch for batch.
    assert [plain.batch_size_for(n) for n in (1, 3, 4)] == [1, 3, 4]
    assert all(
        np.array_equal(a, b) for a, b in zip(pixels(plain, items(3)), pixels(plain, items(3)), strict=True)
    )


def test_channels_last_weights_give_the_same_images(
    cache_for: Callable[..., PipelineCache], plain: PipelineCache
) -> None:
    cache = cache_for(channels_last="true")
    pipe = cache.text2img()
    for module in (pipe.unet, pipe.movq):
        convs = [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not plain.text2img().unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    for got, want in zip(pixels(cache, items(2)), pixels(plain, items(2)), strict=True):
        assert np.abs(got - want).max() <= 1  # measured: 1 level of 255 at most


def test_attention_runs_on_the_sdpa_processors(plain: PipelineCache) -> None:
    found = plain.attention_processors()
    assert {"prior.prior", "decoder.unet", "decoder.movq"} <= set(found)
    assert found["decoder.unet"] == ["AttnAddedKVProcessor2_0"]
    assert found["prior.prior"] == ["AttnProcessor2_0"] and found["decoder.movq"] == ["AttnProcessor2_0"]
    assert {name for names in found.values() for name in names} <= SDPA_PROCESSORS


def test_eager_attention_processors_are_switched_to_sdpa_at_load(
    cache_for: Callable[..., PipelineCache], plain: PipelineCache
) -> None:
    # Given a cache whose decoder came with the eager processors
    cache = cache_for()
    pipe = cache.text2img()
    pipe.unet.set_attn_processor(AttnAddedKVProcessor())
    for module in pipe.movq.modules():
        if isinstance(module, Attention):  # VQModel has no set_attn_processor
            module.set_processor(AttnProcessor())
    assert cache.attention_processors()["decoder.unet"] == ["AttnAddedKVProcessor"]
    assert cache.attention_processors()["decoder.movq"] == ["AttnProcessor"]
    # When the options are applied again (as at every load)
    cache._accelerate("decoder", pipe)
    # Then every processor is an SDPA one, and images are those of SDPA from the start
    assert cache.attention_processors()["decoder.unet"] == ["AttnAddedKVProcessor2_0"]
    assert cache.attention_processors()["decoder.movq"] == ["AttnProcessor2_0"]
    assert np.array_equal(pixels(cache, items(1))[0], pixels(plain, items(1))[0])


def test_bfloat16_on_the_cpu_makes_an_image(cache_for: Callable[..., PipelineCache]) -> None:
    cache = cache_for(dtype="bfloat16")
    assert cache.dtype is torch.bfloat16 and cache.text2img().unet.dtype is torch.bfloat16
    [image] = pixels(cache, items(1))
    assert image.shape == (64, 64, 3) and image.std() > 0
