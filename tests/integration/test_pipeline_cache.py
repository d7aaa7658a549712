"""PipelineCache: weights load once, are shared across modes, and stay within a budget."""

from __future__ import annotations

import pytest

from kandinsky_batch.schema import Mode
from tests.conftest import make_settings
from worker.pipelines import PipelineCache


@pytest.fixture
def cache_for(tiny_models, tmp_path):
    def build(**overrides) -> PipelineCache:
        return PipelineCache(make_settings("redis://unused", tiny_models, tmp_path, **overrides))

    return build


def test_switching_modes_loads_prior_and_decoder_once(cache_for):
    cache = cache_for()
    # what text2img -> img2img -> interpolate -> text2img ask of the cache
    for get in (cache.prior, cache.text2img, cache.prior, cache.img2img, cache.prior, cache.text2img):
        get()
    assert cache.loads == {"prior": 1, "decoder": 1}


def test_img2img_shares_every_weight_with_text2img(cache_for):
    cache = cache_for()
    t2i, i2i = cache.text2img(), cache.img2img()
    assert i2i is not t2i
    for name in ("unet", "movq", "text_encoder"):
        assert getattr(i2i, name) is getattr(t2i, name)
        assert (
            next(getattr(i2i, name).parameters()).data_ptr()
            == next(getattr(t2i, name).parameters()).data_ptr()
        )


def test_warm_loads_only_what_the_served_modes_need(cache_for):
    cache = cache_for()
    cache.warm([Mode.TEXT2IMG, Mode.INTERPOLATE])
    assert cache.loads == {"prior": 1, "decoder": 1}
    inpaint_only = cache_for()
    inpaint_only.warm([Mode.INPAINT])
    assert inpaint_only.loads == {"prior": 1, "inpaint": 1}
    inpaint_only.text2img()  # another mode on first need
    assert inpaint_only.loads == {"prior": 1, "inpaint": 1, "decoder": 1}


def test_memory_budget_evicts_the_least_recently_used_decoder(cache_for):
    probe = cache_for()
    probe.prior()
    prior_only = probe.resident_bytes()
    probe.text2img()
    one_decoder = probe.resident_bytes()
    budget_mb = (one_decoder + (one_decoder - prior_only) // 2) / 2**20
    cache = cache_for(memory_budget_mb=max(1, round(budget_mb + 0.5)))
    cache.prior()
    cache.text2img()
    cache.inpaint()  # over budget: the text2img decoder goes
    assert cache.resident_bytes() <= cache.settings.memory_budget_mb * 2**20
    cache.inpaint()
    cache.text2img()  # back again: a second load, and now inpaint goes
    assert cache.loads == {"prior": 1, "decoder": 2, "inpaint": 1}
    cache.text2img()
    assert cache.loads["decoder"] == 2
