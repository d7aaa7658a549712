"""A real worker's /metrics, scraped while it runs jobs and after: every figure equals what ran.

The worker is `tests.helpers.fault_worker` with slow steps (so a scrape lands mid-job), on a free
loopback port. Jobs: three compatible text2img jobs of 1, 2 and 1 images (one micro-batch of 4),
an img2img job whose input file is missing (bad_input, after its start) and a raw message whose
spec is invalid at the worker (invalid_spec, never started).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kandinsky_batch.broker import make_celery
from kandinsky_batch.keys import TASK_NAME, job_id
from kandinsky_batch.schema import JobState, Mode
from kandinsky_batch.settings import Settings
from producer.client import Client
from tests.conftest import WorkerProcess, make_settings
from tests.integration.conftest import free_port, wait_for

pytestmark = pytest.mark.integration

STEP_SLEEP_S = 0.25
TINY = {"height": 64, "width": 64, "num_inference_steps": 4, "prior_num_inference_steps": 2}
NAMES = {
    "kandinsky_batch_jobs",
    "kandinsky_batch_images",
    "kandinsky_batch_generation_seconds",
    "kandinsky_batch_image_seconds",
    "kandinsky_batch_upload_seconds",
    "kandinsky_batch_queue_wait_seconds",
    "kandinsky_batch_micro_batch_images",
    "kandinsky_batch_pipeline_loads",
    "kandinsky_batch_redeliveries",
    "kandinsky_batch_worker_busy",
    "kandinsky_batch_worker_info",
    "kandinsky_batch_last_progress_timestamp_seconds",
    "kandinsky_batch_device_seconds",
    "kandinsky_batch_cost",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scrape:
    """One /metrics answer, parsed by prometheus-client's own parser."""

    def __init__(self, url: str) -> None:
        answer = httpx.get(url, timeout=10)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        families = list(text_string_to_metric_families(answer.text))
        self.families = {family.name: family for family in families}
        self.samples: Samples = {
            (s.name, frozenset(s.labels.items())): s.value for family in families for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def nonzero(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name and v}

    def labels(self, name: str) -> list[dict[str, str]]:
        return [dict(labels) for (n, labels) in self.samples if n == name]


@pytest.fixture(scope="module")
def metered(
    redis_url: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, str]]:
    root = tmp_path_factory.mktemp("metrics")
    settings = make_settings(
        redis_url,
        tiny_models,
        root,
        metrics_port=free_port(),
        metrics_host="127.0.0.1",
        worker_name="metered",
        input_roots=[str(root)],
    )
    env = {"KB_TEST_STEP_SLEEP_S": str(STEP_SLEEP_S)}
    proc = WorkerProcess(settings, root / "worker.log", module="tests.helpers.fault_worker", env=env).start()
    yield settings, f"http://127.0.0.1:{settings.metrics_port}/metrics"
    assert proc.stop() == 0, proc.log()


def test_an_idle_worker_describes_itself_and_exports_no_gpu_series_on_the_cpu(metered):
    _, url = metered
    scrape = Scrape(url)
    assert set(scrape.families) >= NAMES
    assert scrape.labels("kandinsky_batch_worker_info") == [
        {
            "worker": "metered",
            "modes": "text2img,img2img,inpaint,interpolate",
            "device": "cpu",
            "dtype": "float32",
            "version": metadata.version("kandinsky-batch"),
        }
    ]
    assert scrape.value("kandinsky_batch_worker_info", **scrape.labels("kandinsky_batch_worker_info")[0]) == 1
    assert scrape.value("kandinsky_batch_worker_busy") == 0
    for pipeline in ("prior", "decoder", "inpaint"):  # warmed once, before the worker was ready
        assert scrape.value("kandinsky_batch_pipeline_loads_total", pipeline=pipeline) == 1
    assert not [name for name in scrape.families if "gpu" in name]
    assert {"process_resident_memory_bytes", "python_info"} <= set(scrape.families)


def test_counters_and_histograms_equal_what_ran_and_busy_shows_during_a_job(metered):
    settings, url = metered
    submitted = time.time()
    missing = (Path(settings.input_roots[0]) / "not-there.png").as_uri()
    with Client(settings) as client:
        batch = client.submit_batch(
            [
                {"prompt": "one", **TINY},
                {"prompt": "two", "num_images": 2, **TINY},
                {"prompt": "three", **TINY},
                {"mode": "img2img", "prompt": "gone", "image": missing, "strength": 0.5, **TINY},
            ]
        ).batch_id
        app = make_celery(settings)
        app.send_task(
            TASK_NAME,
            kwargs={"v": 1, "batch_id": f"{batch}x", "shared": {}, "jobs": [{"index": 0, "spec": {"prompt": "x", "height": 65}}]},
            queue=settings.queue_for(Mode.TEXT2IMG),
        )  # fmt: skip
        app.close()

        # During the run: scraped while the micro-batch's slow steps run.
        during = wait_for(
            lambda: (s := Scrape(url)).value("kandinsky_batch_worker_busy") == 1 and s, 60, "busy"
        )
        progress = during.value("kandinsky_batch_last_progress_timestamp_seconds")
        assert submitted <= progress <= time.time()

        final = client.wait(batch, timeout=120)
        invalid = client.wait(job_id(f"{batch}x", 0), timeout=30)
    assert final.counts[JobState.SUCCEEDED] == 3 and final.counts[JobState.FAILED] == 1
    assert invalid.state is JobState.FAILED and invalid.error is not None
    assert invalid.error.code == "invalid_spec"

    after = wait_for(lambda: (s := Scrape(url)).value("kandinsky_batch_worker_busy") == 0 and s, 30, "idle")
    assert after.nonzero("kandinsky_batch_jobs_total") == {
        frozenset({("mode", "text2img"), ("outcome", "succeeded"), ("code", "")}): 3,
        frozenset({("mode", "img2img"), ("outcome", "failed"), ("code", "bad_input")}): 1,
        frozenset({("mode", "text2img"), ("outcome", "failed"), ("code", "invalid_spec")}): 1,
    }
    assert after.nonzero("kandinsky_batch_images_total") == {frozenset({("mode", "text2img")}): 4}
    # One micro-batch of the three text2img jobs; the img2img job failed before generating.
    assert after.value("kandinsky_batch_micro_batch_images_count") == 1
    assert after.value("kandinsky_batch_micro_batch_images_sum") == 4
    assert after.value("kandinsky_batch_micro_batch_images_bucket", le="4.0") == 1
    assert after.value("kandinsky_batch_micro_batch_images_bucket", le="2.0") == 0
    assert after.value("kandinsky_batch_generation_seconds_count", mode="text2img") == 1
    generation_s = after.value("kandinsky_batch_generation_seconds_sum", mode="text2img")
    assert generation_s >= TINY["num_inference_steps"] * STEP_SLEEP_S  # the slowed steps are inside it
    assert after.value("kandinsky_batch_image_seconds_count", mode="text2img") == 4
    assert after.value("kandinsky_batch_image_seconds_sum", mode="text2img") == pytest.approx(generation_s)
    assert after.value("kandinsky_batch_generation_seconds_count", mode="img2img") == 0
    # The stored jobs' GPU shares add up to their micro-batch's call; no rate is set, so no cost.
    gpu_s = after.value("kandinsky_batch_device_seconds_total", mode="text2img", tenant="")
    assert gpu_s == pytest.approx(generation_s, rel=0.01)
    assert after.nonzero("kandinsky_batch_device_seconds_total").keys() == {
        frozenset({("mode", "text2img"), ("tenant", "")})
    }
    assert not after.nonzero("kandinsky_batch_cost_total")
    assert after.value("kandinsky_batch_upload_seconds_count") == 3
    assert after.value("kandinsky_batch_upload_seconds_sum") > 0
    # Started jobs only: the invalid spec never started.
    assert after.value("kandinsky_batch_queue_wait_seconds_count", mode="text2img") == 3
    assert after.value("kandinsky_batch_queue_wait_seconds_count", mode="img2img") == 1
    assert after.value("kandinsky_batch_queue_wait_seconds_sum", mode="text2img") < 3 * (
        time.time() - submitted
    )
    for pipeline in ("prior", "decoder", "inpaint"):  # nothing loaded again
        assert after.value("kandinsky_batch_pipeline_loads_total", pipeline=pipeline) == 1
    assert after.nonzero("kandinsky_batch_redeliveries_total") == {}
    assert progress <= after.value("kandinsky_batch_last_progress_timestamp_seconds") <= time.time()
    assert not [name for name in after.families if "gpu" in name]
