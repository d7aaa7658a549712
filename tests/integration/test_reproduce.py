"""`reproduce`: the printed script regenerates a stored image with torch and diffusers alone.

The jobs run in the real engine on the tiny models; the CLI prints the script from the job's status
and metadata in Redis and storage; the script runs in a fresh interpreter and its PNG is compared
with the stored one, pixel by pixel.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import redis
from PIL import Image

from kandinsky_batch.keys import JobRef, Keys
from kandinsky_batch.schema import JobSpec, JobState, Mode
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage, open_storage
from kandinsky_batch.store.status import StatusStore
from producer.cli.main import main
from tests.conftest import make_settings, settings_env
from tests.helpers.images import data_url, image_bytes
from tests.helpers.s3server import create_bucket, running_s3_server
from tests.integration.test_s3_storage import s3_settings
from worker.engine import Engine
from worker.jobs import Job
from worker.pipelines import PipelineCache

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
PICTURE = image_bytes(color=(30, 140, 220))
MASK = image_bytes(mode="L")
# Every mode with inline inputs where it takes any, and a negative prompt for two of them.
MODE_SPECS: dict[Mode, dict[str, Any]] = {
    Mode.TEXT2IMG: {"prompt": "a red fox", "negative_prompt": "blurry"},
    Mode.IMG2IMG: {"mode": "img2img", "prompt": "a red fox", "image": data_url(PICTURE), "strength": 0.6},
    Mode.INPAINT: {
        "mode": "inpaint",
        "prompt": "a red fox",
        "negative_prompt": "low quality",
        "image": data_url(PICTURE),
        "mask": [[0, 0, 40, 64]],
    },
    Mode.INTERPOLATE: {
        "mode": "interpolate",
        "prompt": "a painting",
        "conditions": [{"text": "a cat", "weight": 0.6}, {"image": data_url(PICTURE), "weight": 0.4}],
    },
}
ALLOWED_IMPORTS = {"hashlib", "io", "sys", "urllib", "torch", "diffusers", "PIL"}


@pytest.fixture(scope="module")
def cache(redis_url: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> PipelineCache:
    cache = PipelineCache(make_settings(redis_url, tiny_models, tmp_path_factory.mktemp("cache")))
    cache.warm(list(Mode))
    return cache


def make_engine(cache: PipelineCache, settings: Settings, client: redis.Redis) -> Engine:
    status = StatusStore(client, Keys(settings.key_prefix), 600)
    return Engine(settings, cache, open_storage(settings), status, "test-worker")


@pytest.fixture
def engine(
    cache: PipelineCache, redis_url: str, tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    settings = make_settings(redis_url, tiny_models, tmp_path, input_roots=[tmp_path / "inputs"])
    use_settings(settings, monkeypatch)
    with redis.Redis.from_url(redis_url) as client:
        yield make_engine(cache, settings, client)


def use_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads its settings from the environment, as in production."""
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)


def run_jobs(engine: Engine, batch: str, specs: list[dict[str, Any]]) -> list[Job]:
    """Run `specs` as one message (compatible ones share a micro-batch); all must succeed."""
    jobs = [Job(JobRef(batch, i), JobSpec(**{**TINY, **s}).with_seed()) for i, s in enumerate(specs)]
    engine.status.create_jobs(batch, [(j.index, j.spec.seed or 0) for j in jobs])
    engine.run(jobs)
    for job in jobs:
        st = engine.status.job(job.job_id)
        assert st.state is JobState.SUCCEEDED, st.error
    return jobs


def reproduce(job_id: str, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    """The script `kandinsky-batch reproduce` prints, saved to `out`."""
    capsys.readouterr()
    assert main(["reproduce", job_id, *extra]) == 0
    out.write_text(capsys.readouterr().out)
    return out


def start_script(script: Path, image: Path) -> subprocess.Popen[str]:
    # -I: isolated, so neither this folder nor PYTHONPATH can lend the script anything.
    return subprocess.Popen(
        [sys.executable, "-I", str(script), str(image)],
        cwd=script.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out + err


def stored_pixels(storage: Storage, uri: str) -> np.ndarray:
    key = storage.key_for(uri)
    assert key is not None
    return np.asarray(Image.open(io.BytesIO(storage.get(key))), dtype=np.int16)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.int16)


def metadata(engine: Engine, job_id: str) -> dict[str, Any]:
    uri = engine.status.job(job_id).metadata or ""
    key = engine.storage.key_for(uri)
    assert key is not None
    loaded: dict[str, Any] = json.loads(engine.storage.get(key))
    return loaded


def imported_modules(script: Path) -> set[str]:
    tree = ast.parse(script.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("mode", list(Mode))
def test_the_script_regenerates_each_mode_alone_bit_identical_and_batched_within_one_level(
    engine: Engine, mode: Mode, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a job that ran alone, and three jobs that ran as one micro-batch of 3
    [alone] = run_jobs(engine, f"alone-{mode.value}", [{**MODE_SPECS[mode], "seed": 41}])
    batched = run_jobs(engine, f"mb-{mode.value}", [{**MODE_SPECS[mode], "seed": 50 + i} for i in range(3)])
    assert metadata(engine, batched[1].job_id)["batch"]["size"] == 3
    # When `reproduce` prints a script for each and the scripts run on their own
    scripts = [reproduce(job.job_id, tmp_path / f"{job.job_id}.py", capsys) for job in (alone, batched[1])]
    procs = [start_script(s, s.with_suffix(".png")) for s in scripts]
    results = [finish(p) for p in procs]
    # Then each imports only torch, diffusers, Pillow and the standard library
    for script, (rc, output) in zip(scripts, results, strict=True):
        assert rc == 0, output
        assert imported_modules(script) <= ALLOWED_IMPORTS
    # and the lone job's image comes back bit-identical, the batched one within one level of 255
    st = [engine.status.job(job.job_id) for job in (alone, batched[1])]
    again = [pixels(s.with_suffix(".png")) for s in scripts]
    assert np.array_equal(again[0], stored_pixels(engine.storage, st[0].outputs[0]))
    assert np.abs(again[1] - stored_pixels(engine.storage, st[1].outputs[0])).max() <= 1
    # and the two differ (different seeds), so the comparison could fail
    assert np.abs(again[0] - again[1]).max() > 1


def test_image_k_of_a_multi_image_job_uses_seed_plus_k(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [job] = run_jobs(engine, "multi", [{"prompt": "a lighthouse", "seed": 7, "num_images": 2}])
    script = reproduce(job.job_id, tmp_path / "k1.py", capsys, "--image", "1")
    assert "'seed': 8" in script.read_text()
    rc, output = finish(start_script(script, tmp_path / "k1.png"))
    assert rc == 0, output
    outputs = engine.status.job(job.job_id).outputs
    diff = [np.abs(pixels(tmp_path / "k1.png") - stored_pixels(engine.storage, uri)).max() for uri in outputs]
    assert diff[1] <= 1 < diff[0]


def test_an_inline_input_is_stored_once_per_batch_and_named_by_uri_and_sha256(engine: Engine) -> None:
    # Given three jobs of one batch with the same inline image and an inline mask
    spec = {**MODE_SPECS[Mode.INPAINT], "mask": data_url(MASK)}
    jobs = run_jobs(engine, "inputs-once", [{**spec, "seed": i} for i in range(3)])
    # Then the batch's storage holds each distinct input once, named by its sha256
    root = Path(unquote(urlparse(engine.settings.storage_url).path))
    stored = sorted(p.name for p in (root / "inputs-once" / "inputs").iterdir())
    expected = sorted(f"{hashlib.sha256(b).hexdigest()}.png" for b in (PICTURE, MASK))
    assert stored == expected
    # and every job's metadata and PNG text chunk name them, with the spec pointing at them too
    for job in jobs:
        meta = metadata(engine, job.job_id)
        refs = {r["field"]: r for r in meta["inputs"]}
        assert refs["image"]["sha256"] == hashlib.sha256(PICTURE).hexdigest()
        assert refs["mask"]["sha256"] == hashlib.sha256(MASK).hexdigest()
        assert meta["spec"]["image"] == refs["image"]["uri"]
        assert meta["spec"]["mask"] == refs["mask"]["uri"]
        assert not any(str(v).startswith("data:") for v in meta["spec"].values())
        for ref in refs.values():
            key = engine.storage.key_for(ref["uri"])
            assert key is not None
            assert hashlib.sha256(engine.storage.get(key)).hexdigest() == ref["sha256"]
        png = Image.open(io.BytesIO(engine.storage.get(f"inputs-once/{job.job_id}/0.png")))
        assert json.loads(png.text["parameters"])["inputs"] == meta["inputs"]


def test_a_file_input_gets_a_sha256_and_a_changed_file_stops_the_script(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an img2img job that read its image from a file under the allowed input folder
    picture = tmp_path / "inputs" / "picture.png"
    picture.parent.mkdir()
    picture.write_bytes(PICTURE)
    spec = {**MODE_SPECS[Mode.IMG2IMG], "image": picture.as_uri(), "seed": 3}
    [job] = run_jobs(engine, "file-input", [spec])
    [ref] = metadata(engine, job.job_id)["inputs"]
    assert ref == {"field": "image", "uri": picture.as_uri(), "sha256": hashlib.sha256(PICTURE).hexdigest()}
    script = reproduce(job.job_id, tmp_path / "file.py", capsys)
    rc, output = finish(start_script(script, tmp_path / "file.png"))
    assert rc == 0, output
    assert np.array_equal(
        pixels(tmp_path / "file.png"), stored_pixels(engine.storage, engine.status.job(job.job_id).outputs[0])
    )
    # When the file changes, the script refuses instead of drawing something else
    picture.write_bytes(image_bytes(color=(1, 2, 3)))
    rc, output = finish(start_script(script, tmp_path / "changed.png"))
    assert rc != 0
    assert "has changed" in output
    assert not (tmp_path / "changed.png").exists()


def test_inputs_in_s3_reach_the_script_by_presigned_url(
    cache: PipelineCache,
    redis_url: str,
    tiny_models: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with running_s3_server() as endpoint, redis.Redis.from_url(redis_url) as client:
        base = make_settings(redis_url, tiny_models, tmp_path)
        s3 = s3_settings(endpoint, create_bucket(endpoint))
        settings = base.model_copy(update={k: getattr(s3, k) for k in s3.model_fields_set})
        use_settings(settings, monkeypatch)
        engine = make_engine(cache, settings, client)
        [job] = run_jobs(engine, "s3-input", [{**MODE_SPECS[Mode.IMG2IMG], "seed": 9}])
        [ref] = metadata(engine, job.job_id)["inputs"]
        assert ref["uri"].startswith(f"{settings.storage_url}/s3-input/inputs/")
        script = reproduce(job.job_id, tmp_path / "s3.py", capsys)
        assert "X-Amz-Signature" in script.read_text()
        rc, output = finish(start_script(script, tmp_path / "s3.png"))
        assert rc == 0, output
        stored = stored_pixels(engine.storage, engine.status.job(job.job_id).outputs[0])
        assert np.array_equal(pixels(tmp_path / "s3.png"), stored)


@pytest.mark.parametrize(
    ("target", "extra", "code", "message"),
    [
        ("nope-0", [], 2, "not_found"),
        ("queued", [], 1, "only a succeeded job"),
        ("done", ["--image", "5"], 1, "--image must be in 0..0"),
        ("batch", [], 1, "reproduce takes a job id"),
    ],
)
def test_what_cannot_be_reproduced_is_refused_with_a_reason(
    engine: Engine, target: str, extra: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    [done] = run_jobs(engine, "refusals", [{"prompt": "a boat", "seed": 1}])
    engine.status.create_jobs("waiting", [(0, 5)])
    ids = {"queued": "waiting-0", "done": done.job_id, "batch": "refusals", "nope-0": "nope-0"}
    capsys.readouterr()
    assert main(["reproduce", ids[target], *extra]) == code
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""
