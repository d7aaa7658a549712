"""The engine without Celery: real tiny pipelines, real Redis status, file storage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import redis
import torch
from PIL import Image

from kandinsky_batch.errors import StorageUnavailable
from kandinsky_batch.keys import JobField, JobRef, Keys
from kandinsky_batch.schema import JobSpec, JobState, Mode
from kandinsky_batch.storage.file import FileStorage
from kandinsky_batch.store.status import StatusStore
from tests.conftest import make_settings
from tests.helpers.images import png_url
from worker.engine import Engine
from worker.generate import generate
from worker.jobs import Job
from worker.pipelines import PipelineCache

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
CONDS = [{"text": "a cat", "weight": 0.6}, {"image": png_url(), "weight": 0.4}]
MODE_SPECS = {
    Mode.TEXT2IMG: {"prompt": "a red fox"},
    Mode.IMG2IMG: {"mode": "img2img", "prompt": "a red fox", "image": png_url(), "strength": 0.5},
    Mode.INPAINT: {"mode": "inpaint", "prompt": "a red fox", "image": png_url(), "mask": [[0, 0, 32, 64]]},
    Mode.INTERPOLATE: {"mode": "interpolate", "conditions": CONDS},
}


@pytest.fixture(scope="module")
def cache(redis_url, tiny_models, tmp_path_factory) -> PipelineCache:
    settings = make_settings(redis_url, tiny_models, tmp_path_factory.mktemp("cache"))
    cache = PipelineCache(settings)
    cache.warm(list(Mode))
    return cache


@pytest.fixture
def engine(cache: PipelineCache, redis_url, tiny_models, tmp_path) -> Iterator[Engine]:
    settings = make_settings(redis_url, tiny_models, tmp_path, max_batch_size=8)
    with redis.Redis.from_url(redis_url) as client:
        status = StatusStore(client, Keys(settings.key_prefix), 600)
        yield Engine(settings, cache, FileStorage(tmp_path / "store"), status, "test-worker")


def submit(engine: Engine, batch: str, specs: list[dict]) -> list[Job]:
    jobs = [Job(JobRef(batch, i), JobSpec(**{**TINY, **s}).with_seed()) for i, s in enumerate(specs)]
    engine.status.create_jobs(batch, [(j.index, j.spec.seed or 0) for j in jobs])
    return jobs


def pixels(engine: Engine, job: str, k: int = 0) -> np.ndarray:
    uri = engine.status.job(job).outputs[k]
    return np.asarray(Image.open(urlparse(uri).path), dtype=np.int16)


@pytest.mark.parametrize("mode", list(Mode))
def test_each_mode_makes_its_image(engine: Engine, mode: Mode):
    [job] = submit(engine, f"m-{mode}", [MODE_SPECS[mode]])
    engine.run([job])
    st = engine.status.job(job.job_id)
    assert st.state is JobState.SUCCEEDED, st.error
    assert pixels(engine, job.job_id).shape == (64, 64, 3)
    meta = json.loads(Path(urlparse(st.metadata or "").path).read_text())
    assert meta["spec"]["mode"] == mode.value
    assert set(meta["models"]) == {"prior", "inpaint" if mode is Mode.INPAINT else "decoder"}


@pytest.mark.parametrize("mode", list(Mode))
def test_a_job_gives_the_same_image_alone_or_in_a_batch(engine: Engine, mode: Mode):
    # Given four jobs with fixed seeds (and a negative prompt for two modes)
    extra = {"negative_prompt": "blurry"} if mode in (Mode.TEXT2IMG, Mode.INPAINT) else {}
    specs = [{**MODE_SPECS[mode], **extra, "seed": 1000 + i} for i in range(4)]
    batched = submit(engine, f"batched-{mode}", specs)
    alone = submit(engine, f"alone-{mode}", specs[2:3])
    # When they run as one micro-batch, and one of them again alone
    engine.run(batched)
    engine.run(alone)
    # Then that job's image is the same within one level of 255 (batched matmul rounding)
    meta = json.loads(Path(urlparse(engine.status.job(batched[2].job_id).metadata or "").path).read_text())
    assert meta["batch"]["size"] == 4
    diff = np.abs(pixels(engine, batched[2].job_id) - pixels(engine, alone[0].job_id))
    assert diff.max() <= 1
    # and different seeds give different images
    assert np.abs(pixels(engine, batched[0].job_id) - pixels(engine, batched[1].job_id)).max() > 1


def test_the_same_seed_alone_twice_is_bit_identical(engine: Engine):
    a = submit(engine, "same-a", [{"prompt": "a cat", "seed": 5}])
    b = submit(engine, "same-b", [{"prompt": "a cat", "seed": 5}])
    engine.run(a)
    engine.run(b)
    assert np.array_equal(pixels(engine, a[0].job_id), pixels(engine, b[0].job_id))


def test_num_images_gives_distinct_images_with_consecutive_seeds(engine: Engine):
    [job] = submit(engine, "multi", [{"prompt": "a cat", "num_images": 3, "seed": 9}])
    [single] = submit(engine, "multi-1", [{"prompt": "a cat", "seed": 10}])
    engine.run([job, single])
    st = engine.status.job(job.job_id)
    assert len(st.outputs) == 3
    assert np.abs(pixels(engine, job.job_id, 1) - pixels(engine, single.job_id)).max() <= 1


def test_out_of_memory_splits_the_batch_down_to_what_fits(engine: Engine):
    calls: list[int] = []

    def fits_two(cache, items, on_step):
        calls.append(len(items))
        if len(items) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return generate(cache, items, on_step)

    engine.generate_fn = fits_two
    jobs = submit(engine, "oom-split", [{"prompt": f"p{i}"} for i in range(5)])
    engine.run(jobs)
    assert calls == [5, 2, 3, 1, 2]  # halves: 2 fit; 3 -> 1 + 2
    assert all(engine.status.job(j.job_id).state is JobState.SUCCEEDED for j in jobs)


def test_out_of_memory_on_one_image_fails_only_that_job(engine: Engine):
    def big_ones_fail(cache, items, on_step):
        if any(it.spec.prompt == "huge" for it in items):
            raise RuntimeError("CUDA error: out of memory")
        return generate(cache, items, on_step)

    engine.generate_fn = big_ones_fail
    jobs = submit(engine, "oom-one", [{"prompt": "ok"}, {"prompt": "huge"}, {"prompt": "fine"}])
    engine.run(jobs)
    states = [engine.status.job(j.job_id) for j in jobs]
    assert [s.state for s in states] == [JobState.SUCCEEDED, JobState.FAILED, JobState.SUCCEEDED]
    assert states[1].error is not None and states[1].error.code == "out_of_memory"


def test_an_unexpected_error_fails_only_the_job_that_fails_alone(engine: Engine):
    # Given a micro-batch of 4 jobs (from any messages) where one job's parameters hit a bug
    calls: list[int] = []

    def buggy_for_one(cache, items, on_step):
        calls.append(len(items))
        if any(it.spec.prompt == "buggy" for it in items):
            raise ValueError("a bug for this mix")
        return generate(cache, items, on_step)

    engine.generate_fn = buggy_for_one
    jobs = submit(engine, "bug-one", [{"prompt": p} for p in ("a", "b", "buggy", "c")])
    engine.run(jobs)
    # Then it is retried in halves, and only the job that fails alone fails, with internal_error
    assert calls == [4, 2, 2, 1, 1]
    states = [engine.status.job(j.job_id) for j in jobs]
    assert [s.state for s in states] == [JobState.SUCCEEDED] * 2 + [JobState.FAILED, JobState.SUCCEEDED]
    assert states[2].error is not None and states[2].error.code == "internal_error"
    assert "ValueError: a bug for this mix" in states[2].error.message


def test_progress_reaches_every_step(engine: Engine):
    seen: list[tuple[int, int]] = []

    def spy(cache, items, on_step):
        def record(step, total):
            on_step(step, total)
            seen.append((engine.status.job(items[0].job_id).progress.step, total))

        return generate(cache, items, record)

    engine.generate_fn = spy
    [job] = submit(engine, "progress", [{"prompt": "x", "num_inference_steps": 3}])
    engine.run([job])
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_a_job_canceled_mid_run_stops_between_steps_and_stores_nothing(engine: Engine):
    def cancel_at_first_step(cache, items, on_step):
        def hook(step, total):
            engine.status.cancel(items[0].job_id)
            on_step(step, total)

        return generate(cache, items, hook)

    engine.generate_fn = cancel_at_first_step
    [job] = submit(engine, "cancel", [{"prompt": "x", "num_inference_steps": 5}])
    engine.run([job])
    st = engine.status.job(job.job_id)
    assert st.state is JobState.CANCELED and st.outputs == []
    assert not (Path(engine.storage.root) / "cancel").exists()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("mode", "spec", "reason"),
    [
        (Mode.IMG2IMG, {"prompt": "x", "image": "data:image/png;base64,!!!"}, "base64"),
        (Mode.IMG2IMG, {"prompt": "x", "image": "data:image/png;base64,aGVsbG8="}, "not a readable"),
        (Mode.IMG2IMG, {"prompt": "x", "image": "file:///etc/passwd"}, "outside the allowed"),
        (Mode.IMG2IMG, {"prompt": "x", "image": "ftp://example.com/a.png"}, "scheme"),
        (
            Mode.INPAINT,
            {"prompt": "x", "image": png_url((64, 64)), "mask": png_url((32, 32))},
            "mask is 32x32",
        ),
        (
            Mode.INTERPOLATE,
            {"conditions": [{"text": "a", "weight": 1}, {"image": "data:,x", "weight": 1}]},
            "base64",
        ),
    ],
)
def test_bad_inputs_fail_their_job_with_a_code(engine: Engine, mode, spec, reason):
    jobs = submit(
        engine,
        f"bad-{mode}-{reason[:4].replace(' ', '_')}",
        [{**spec, "mode": mode}, MODE_SPECS[Mode.TEXT2IMG]],
    )
    engine.run(jobs)
    bad, good = (engine.status.job(j.job_id) for j in jobs)
    assert bad.state is JobState.FAILED and bad.error is not None
    assert bad.error.code == "bad_input" and reason in bad.error.message
    assert good.state is JobState.SUCCEEDED


def test_a_storage_outage_hands_the_jobs_back_by_one_channel(cache, redis_url, tiny_models, tmp_path):
    # Given an engine whose storage refuses every upload, with no retry window
    settings = make_settings(redis_url, tiny_models, tmp_path, upload_retry_window_s=0.0)
    storage = FileStorage(tmp_path / "store")

    def refuse(key: str, data: bytes, content_type: str) -> str:
        raise StorageUnavailable("the store is down")

    storage.put = refuse  # type: ignore[method-assign]
    handed: list[tuple[list[str], str]] = []
    with redis.Redis.from_url(redis_url) as client:
        status = StatusStore(client, Keys(settings.key_prefix), 600)
        engine = Engine(
            settings,
            cache,
            storage,
            status,
            "test-worker",
            on_storage_failure=lambda jobs, exc: handed.append(([j.job_id for j in jobs], exc.code)),
        )
        jobs = submit(engine, "outage", [{"prompt": "a"}, {"prompt": "b"}])
        # When it runs them (one micro-batch, stored in the background)
        engine.run(jobs)
        # Then each job comes back through on_storage_failure, queued again with one retry counted
        assert sorted(job for ids, _ in handed for job in ids) == [j.job_id for j in jobs]
        assert {code for _, code in handed} == {"storage_unavailable"}
        for job in jobs:
            st = engine.status.job(job.job_id)
            assert st.state is JobState.QUEUED and st.outputs == []
            assert engine.status.field(job.ref, JobField.RETRIES) == "1"
