"""One job's inputs cannot hurt another: a micro-batch of two tenants' jobs and poison jobs.

The jobs are all queued before a real worker starts, so its first task takes them together and
runs each mode's compatible jobs as one micro-batch. Each poison job comes straight onto the
queue as an open-format message (no producer-side validation), so only the worker stands
between it and its batch-mates. Every good job of either tenant must succeed; each poison job
fails alone, with a code and a message.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from PIL import Image

from kandinsky_batch.broker import make_celery
from kandinsky_batch.errors import NotFound
from kandinsky_batch.keys import TASK_NAME, job_id
from kandinsky_batch.schema import TERMINAL_STATES, JobSpec, JobState, JobStatus, Mode, Priority
from kandinsky_batch.settings import Settings
from producer.client import Client
from producer.submit import Submitter
from tests.conftest import WorkerProcess, make_settings
from tests.helpers.corpus import TINY, envelope
from tests.helpers.images import data_url, image_bytes, png_url
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

GOOD_IMAGE = png_url((64, 64))


def sixteen_bit_png() -> str:
    """A 16-bit greyscale PNG: Pillow opens it as mode I;16, which it cannot convert to RGB directly."""
    buf = io.BytesIO()
    Image.new("I;16", (64, 64), 40000).save(buf, format="PNG")
    return data_url(buf.getvalue())


def bomb_png() -> str:
    """A small file that claims 20000 x 20000 pixels: refused before it is decoded."""
    buf = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buf, format="PNG")
    return data_url(buf.getvalue())


# (name, mode, spec fields besides TINY): each fails alone, or succeeds, but never takes others down.
POISON: list[tuple[str, Mode, dict[str, Any]]] = [
    ("nul-in-uri", Mode.IMG2IMG, {"prompt": "x", "image": "file:///tmp/a\x00b.png"}),
    ("newline-in-uri", Mode.IMG2IMG, {"prompt": "x", "image": "file:///tmp/a\nb.png"}),
    ("bad-base64", Mode.IMG2IMG, {"prompt": "x", "image": "data:image/png;base64,!!!"}),
    ("not-an-image", Mode.IMG2IMG, {"prompt": "x", "image": data_url(b"hello, world")}),
    ("truncated-png", Mode.IMG2IMG, {"prompt": "x", "image": data_url(image_bytes((64, 64))[:80])}),
    ("gif", Mode.IMG2IMG, {"prompt": "x", "image": data_url(image_bytes((8, 8), fmt="GIF"))}),
    ("bomb", Mode.IMG2IMG, {"prompt": "x", "image": bomb_png()}),
    ("sixteen-bit", Mode.IMG2IMG, {"prompt": "x", "image": sixteen_bit_png()}),
    ("outside-roots", Mode.IMG2IMG, {"prompt": "x", "image": "file:///etc/hostname"}),
    ("device-file", Mode.IMG2IMG, {"prompt": "x", "image": "file:///dev/zero"}),
    ("other-bucket", Mode.IMG2IMG, {"prompt": "x", "image": "s3://other-bucket/a.png"}),
    ("gopher", Mode.IMG2IMG, {"prompt": "x", "image": "gopher://example.com/a.png"}),
    ("huge-rect", Mode.INPAINT, {"prompt": "x", "image": GOOD_IMAGE, "mask": [[0, 0, 10**20, 5]]}),
    ("rect-outside", Mode.INPAINT, {"prompt": "x", "image": GOOD_IMAGE, "mask": [[1000, 1000, 1001, 1001]]}),
    ("mask-size", Mode.INPAINT, {"prompt": "x", "image": GOOD_IMAGE, "mask": png_url((32, 32))}),
    ("mask-nul", Mode.INPAINT, {"prompt": "x", "image": GOOD_IMAGE, "mask": "file:///a\x00"}),
]
GOOD_SPECS = {
    Mode.IMG2IMG: {"prompt": "a red fox", "image": GOOD_IMAGE, "strength": 0.5},
    Mode.INPAINT: {"prompt": "a red fox", "image": GOOD_IMAGE, "mask": [[0, 0, 32, 64]]},
}
TENANTS = ("acme", "globex")


@pytest.fixture(scope="module")
def poison_settings(redis_url: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("poison")
    return make_settings(redis_url, tiny_models, root, max_batch_size=32, modes=["img2img", "inpaint"])


@pytest.fixture(scope="module")
def queued(poison_settings: Settings) -> Iterator[dict[str, list[str]]]:
    """Good jobs of two tenants and the poison jobs, all queued before any worker runs."""
    good: list[str] = []
    with Client(poison_settings) as client:
        for tenant in TENANTS:
            for mode, fields in GOOD_SPECS.items():
                batch = f"good-{tenant}-{mode.value}"
                submitter = Submitter(poison_settings, client.status_store, batch, Priority.NORMAL, tenant)
                for index in range(2):
                    submitter.add(index, JobSpec(**{**TINY, **fields, "mode": mode}))
                submitter.close()
                good += [job_id(batch, i) for i in range(2)]
    app = make_celery(poison_settings)
    poison = []
    for name, mode, fields in POISON:
        message = envelope(f"poison-{name}", {**fields, "mode": mode.value})
        app.send_task(TASK_NAME, kwargs=message, queue=poison_settings.queue_for(mode))
        poison.append(job_id(f"poison-{name}", 0))
    app.close()
    yield {"good": good, "poison": poison}


@pytest.fixture(scope="module")
def finished(
    poison_settings: Settings, queued: dict[str, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, JobStatus]]:
    log = tmp_path_factory.mktemp("poison-logs") / "worker.log"
    proc = WorkerProcess(poison_settings, log).start()
    try:
        with Client(poison_settings) as client:

            def all_done() -> dict[str, JobStatus] | None:
                try:  # an open-format job has a status once a worker has received its message
                    statuses = {j: client.status_store.job(j) for j in queued["good"] + queued["poison"]}
                except NotFound:
                    return None
                return statuses if all(s.state in TERMINAL_STATES for s in statuses.values()) else None

            statuses = wait_for(all_done, 180, "every good and poison job to finish")
        assert proc.alive(), proc.log()
        yield statuses
    finally:
        proc.stop()


def metadata(status: JobStatus) -> dict[str, Any]:
    return dict(json.loads(Path(urlparse(status.metadata or "").path).read_text()))


def test_every_good_job_of_every_tenant_succeeds_beside_the_poison(queued, finished):
    failed = {j: finished[j].error for j in queued["good"] if finished[j].state is not JobState.SUCCEEDED}
    assert not failed


def test_the_good_jobs_of_both_tenants_ran_in_one_micro_batch_per_mode(queued, finished):
    for mode in GOOD_SPECS:
        mates = {j for j in queued["good"] if f"-{mode.value}-" in j}
        batches = [set(metadata(finished[j])["batch"]["jobs"]) for j in mates]
        assert all(b == batches[0] for b in batches) and mates <= batches[0]


@pytest.mark.parametrize("name", [name for name, _, _ in POISON])
def test_each_poison_job_fails_alone_with_a_code_and_a_message(name, finished):
    status = finished[job_id(f"poison-{name}", 0)]
    if name == "sixteen-bit":  # a readable image after all: it may run, but never hurts the others
        assert status.state in (JobState.SUCCEEDED, JobState.FAILED)
        if status.state is JobState.FAILED:
            assert status.error is not None and status.error.code == "bad_input"
        return
    assert status.state is JobState.FAILED
    assert status.error is not None and status.error.code in ("bad_input", "invalid_spec")
    assert status.error.code != "internal_error" and status.error.message


def test_the_worker_is_still_serving_after_the_poison(poison_settings: Settings, finished):
    with Client(poison_settings) as client:
        job = client.submit({**TINY, **GOOD_SPECS[Mode.IMG2IMG], "mode": "img2img"})
        done = wait_for(
            lambda: client.status_store.job(job).state in TERMINAL_STATES and client.status_store.job(job),
            60,
            "a job after the poison",
        )
    assert done.state is JobState.SUCCEEDED, done.error


# -- the worker checks a tenant's inputs again, against its batch's recorded tenant -------------


def run_as_tenant(settings: Settings, tenant: str, batch: str, fields: dict[str, Any]) -> JobStatus:
    """One job of `tenant`'s batch queued as the API would, but past its submit-time check."""
    with Client(settings) as client:
        submitter = Submitter(settings, client.status_store, batch, Priority.NORMAL, tenant)
        submitter.add(0, JobSpec(**{**TINY, **fields}))
        submitter.close()
        ref = job_id(batch, 0)
        return wait_for(
            lambda: (s := client.status_store.job(ref)).state in TERMINAL_STATES and s, 60, f"{ref} to finish"
        )


def storage_root(settings: Settings) -> Path:
    return Path(urlparse(settings.storage_url).path)


def test_a_tenants_job_cannot_read_another_tenants_output_even_past_submit(
    poison_settings: Settings, queued, finished
):
    theirs = finished[next(j for j in queued["good"] if j.startswith("good-globex-img2img"))].outputs[0]
    status = run_as_tenant(
        poison_settings, "acme", "steal-1", {**GOOD_SPECS[Mode.IMG2IMG], "mode": "img2img", "image": theirs}
    )
    assert status.state is JobState.FAILED and status.error is not None
    assert status.error.code == "bad_input" and "sources/acme/" in status.error.message


def test_a_tenants_job_reads_its_own_sources_and_a_failed_read_names_no_internals(
    poison_settings: Settings, finished
):
    mine = storage_root(poison_settings) / "sources" / "acme" / "in.png"
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_bytes(image_bytes((64, 64)))
    spec = {**GOOD_SPECS[Mode.IMG2IMG], "mode": "img2img"}
    ok = run_as_tenant(poison_settings, "acme", "own-1", {**spec, "image": mine.as_uri()})
    assert ok.state is JobState.SUCCEEDED, ok.error
    missing = mine.with_name("missing.png")
    failed = run_as_tenant(poison_settings, "acme", "own-2", {**spec, "image": missing.as_uri()})
    assert failed.state is JobState.FAILED and failed.error is not None and failed.error.code == "bad_input"
    assert str(missing) not in failed.error.message and "No such file" not in failed.error.message
    # An SDK job (no tenant) keeps the detailed reason: its sender runs the storage.
    with Client(poison_settings) as client:
        ref = client.submit({**TINY, **spec, "image": missing.as_uri()})
        plain = wait_for(lambda: (s := client.status_store.job(ref)).state in TERMINAL_STATES and s, 60, ref)
    assert plain.error is not None and str(missing) in plain.error.message
