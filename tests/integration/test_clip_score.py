"""The worker's CLIP score, checked against transformers' own CLIP classes on the stored PNGs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import redis
import torch
from PIL import Image
from transformers import (
    CLIPImageProcessor,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionModelWithProjection,
)

from kandinsky_batch.keys import JobRef, Keys
from kandinsky_batch.schema import JobSpec, JobState, Mode
from kandinsky_batch.storage.file import FileStorage
from kandinsky_batch.store.status import StatusStore
from producer.client import Client
from tests.conftest import make_settings
from worker import clip
from worker.engine import Engine
from worker.jobs import Job
from worker.pipelines import PipelineCache

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


def path_of(uri: str) -> Path:
    return Path(urlparse(uri).path)


def reference_similarity(prior: Path, png: Path, prompt: str) -> float:
    """100 * cosine(image, prompt) with the prior's CLIP, computed apart from the worker (not clamped)."""
    tokenizer = CLIPTokenizer.from_pretrained(prior / "tokenizer")
    processor = CLIPImageProcessor.from_pretrained(prior / "image_processor")
    text_model = CLIPTextModelWithProjection.from_pretrained(prior / "text_encoder").eval()
    vision_model = CLIPVisionModelWithProjection.from_pretrained(prior / "image_encoder").eval()
    tokens = tokenizer(
        [prompt],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        text = text_model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).text_embeds[0]
        pixels = processor(Image.open(png).convert("RGB"), return_tensors="pt").pixel_values
        image = vision_model(pixel_values=pixels).image_embeds[0]
    return 100 * float(torch.dot(text, image) / (text.norm() * image.norm()))


def reference_score(prior: Path, png: Path, prompt: str) -> float:
    """torchmetrics' CLIPScore: the similarity clamped at 0."""
    return max(reference_similarity(prior, png, prompt), 0.0)


def test_the_stored_score_is_clip_score_of_the_stored_png(worker, client: Client, tiny_models: Path):
    prompts = ["a lighthouse at dawn", "a red fox in snow", "two koi in a pond"]
    specs: list[dict[str, Any]] = [{"prompt": p, **TINY} for p in prompts]
    specs[2]["num_images"] = 2
    submitted = client.submit_batch(specs)
    final = client.wait(submitted.batch_id, timeout=120)
    assert final.counts[JobState.SUCCEEDED] == 3
    checked = 0
    for job_id, prompt in zip(submitted.job_ids, prompts, strict=True):
        status = client.status_store.job(job_id)
        meta = json.loads(path_of(status.metadata or "").read_text())
        stored = meta["clip_score"]
        scores = stored if isinstance(stored, list) else [stored]
        assert isinstance(stored, list) == (len(status.outputs) > 1)
        assert len(scores) == len(status.outputs) and meta["timings"]["clip_score_s"] >= 0
        for uri, score in zip(status.outputs, scores, strict=True):
            assert score == round(score, 4) and score >= 0
            assert score == pytest.approx(
                reference_score(tiny_models / "prior", path_of(uri), prompt), abs=1e-3
            )
            checked += 1
    assert checked == 4


@pytest.fixture(scope="module")
def cache(redis_url, tiny_models, tmp_path_factory) -> PipelineCache:
    cache = PipelineCache(make_settings(redis_url, tiny_models, tmp_path_factory.mktemp("cache")))
    cache.warm([Mode.TEXT2IMG, Mode.INTERPOLATE])
    return cache


@pytest.fixture
def make_engine(cache: PipelineCache, redis_url, tiny_models, tmp_path) -> Iterator[Any]:
    with redis.Redis.from_url(redis_url) as client:

        def make(**overrides: Any) -> Engine:
            settings = make_settings(redis_url, tiny_models, tmp_path, **overrides)
            status = StatusStore(client, Keys(settings.key_prefix), 600)
            return Engine(settings, cache, FileStorage(tmp_path / "store"), status, "test-worker")

        yield make


def run_jobs(engine: Engine, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the jobs in one go; each one's metadata (every job must succeed)."""
    jobs = [Job(JobRef("b", i), JobSpec(**{**TINY, **s}).with_seed()) for i, s in enumerate(specs)]
    engine.status.create_jobs("b", [(j.index, j.spec.seed or 0) for j in jobs])
    engine.run(jobs)
    metas = []
    for job in jobs:
        status = engine.status.job(job.job_id)
        assert status.state is JobState.SUCCEEDED, status.error
        metas.append(json.loads(path_of(status.metadata or "").read_text()))
    return metas


def test_with_clip_score_off_the_metadata_has_none(make_engine):
    [meta] = run_jobs(make_engine(clip_score=False), [{"prompt": "a red fox", "num_images": 2}])
    assert meta["clip_score"] is None and "clip_score_s" not in meta["timings"]


def test_a_scoring_failure_stores_null_and_the_job_succeeds(make_engine, monkeypatch, caplog):
    def broken(*args: Any) -> list[float]:
        raise RuntimeError("scoring broke")

    monkeypatch.setattr(clip, "clip_scores", broken)
    [meta] = run_jobs(make_engine(), [{"prompt": "a red fox"}])
    assert meta["clip_score"] is None
    assert "CLIP scoring failed" in caplog.text


def test_interpolate_is_scored_against_its_prompt_if_it_has_one(make_engine):
    conditions = [{"text": "a cat", "weight": 0.5}, {"text": "a dog", "weight": 0.5}]
    with_prompt, without = run_jobs(
        make_engine(),
        [
            {"mode": "interpolate", "conditions": conditions, "prompt": "a cat and a dog"},
            {"mode": "interpolate", "conditions": conditions},
        ],
    )
    assert isinstance(with_prompt["clip_score"], float) and with_prompt["clip_score"] >= 0
    assert without["clip_score"] is None


def test_the_worker_similarity_matches_before_the_clamp(make_engine, cache: PipelineCache, tiny_models: Path):
    # The tiny models' similarities are all negative (about -35), so the stored scores are 0:
    # this compares the worker's batched similarity itself, on the stored PNGs, before the clamp.
    specs = [{"prompt": "a red fox", "num_images": 2}, {"prompt": "a lighthouse at dawn"}]
    metas = run_jobs(make_engine(), specs)
    pngs = [path_of(uri) for meta in metas for uri in meta["outputs"]]
    prompts = ["a red fox", "a red fox", "a lighthouse at dawn"]
    images = [Image.open(png) for png in pngs]
    got = clip.similarities(cache.prior(), images, prompts, cache.device, cache.dtype).tolist()
    want = [reference_similarity(tiny_models / "prior", png, p) for png, p in zip(pngs, prompts, strict=True)]
    assert got == pytest.approx(want, abs=1e-3) and all(abs(w) > 1 for w in want)
    assert metas[0]["clip_score"] == [max(round(w, 4), 0.0) for w in want[:2]]
    assert metas[1]["clip_score"] == max(round(want[2], 4), 0.0)
