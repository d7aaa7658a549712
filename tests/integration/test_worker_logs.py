"""A real worker with LOG_FORMAT=json: its log file is JSON lines, and a line about a job names it.

The worker (`kandinsky-batch worker`, the real entry point) runs a micro-batch of two text2img
jobs and an img2img job whose input is missing, then stops on SIGTERM. Its stdout and stderr go
to one file, as a container runtime would collect them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kandinsky_batch.keys import job_id
from kandinsky_batch.schema import JobState
from producer.client import Client
from tests.conftest import WorkerProcess, make_settings

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
# Celery's SIGTERM handler writes this straight to the process's stdout, past every logger.
CELERY_SHUTDOWN_NOTICE = "worker: Warm shutdown (MainProcess)"


def test_every_line_is_json_and_lines_about_a_job_carry_its_fields(redis_url, tiny_models, tmp_path):
    settings = make_settings(
        redis_url, tiny_models, tmp_path, log_format="json", worker_name="logs-w", input_roots=[str(tmp_path)]
    )
    log_path = tmp_path / "worker.log"
    proc = WorkerProcess(settings, log_path).start()
    try:
        with Client(settings) as client:
            batch = client.submit_batch(
                [
                    {"prompt": "a harbour", **TINY},
                    {"prompt": "a hill", "num_images": 2, **TINY},
                    {"mode": "img2img", "prompt": "x", "image": (tmp_path / "gone.png").as_uri(), **TINY},
                ]
            ).batch_id
            final = client.wait(batch, timeout=120)
        assert final.counts[JobState.SUCCEEDED] == 2 and final.counts[JobState.FAILED] == 1
    finally:
        assert proc.stop() == 0, proc.log()

    lines: list[dict[str, Any]] = []
    for text in Path(log_path).read_text(encoding="utf-8").splitlines():
        if text.strip() and text != CELERY_SHUTDOWN_NOTICE:
            lines.append(json.loads(text))  # anything else that is not JSON fails here
    assert {"level", "logger", "message", "time"} <= set(lines[0])
    assert any(line["logger"].startswith("celery.") for line in lines)  # Celery's own lines too

    first, second, third = (job_id(batch, i) for i in range(3))
    about_jobs = [line for line in lines if f"{batch}-" in line["message"]]
    assert about_jobs
    for line in about_jobs:
        assert line["worker"] == "logs-w" and line["batch_id"] == batch, line
        assert {"job_id", "mode", "attempt"} <= set(line), line

    def only(message: str) -> dict[str, Any]:
        [line] = [line for line in lines if line["message"] == message]
        return line

    for job, images in ((first, 1), (second, 2)):
        line = only(f"job {job} succeeded: {images} images")
        assert (line["job_id"], line["mode"], line["attempt"], line["level"]) == (job, "text2img", 1, "INFO")
    failed = only(
        f"job {third} failed: bad_input: image: cannot read {tmp_path / 'gone.png'}: No such file or directory"
    )
    assert (failed["job_id"], failed["mode"], failed["attempt"]) == (third, "img2img", 1)
    # A line about a micro-batch lists its jobs (and their attempts, in the same order).
    [micro] = [line for line in lines if line["message"].startswith("generated 3 images for 2 jobs")]
    assert micro["job_id"] == [first, second] and micro["attempt"] == [1, 1]
    assert (micro["batch_id"], micro["mode"], micro["worker"]) == (batch, "text2img", "logs-w")
    # The process's own lines carry the worker's name too, and no job.
    ready = only("worker logs-w ready: {'prior': 1, 'decoder': 1, 'inpaint': 1}")
    assert ready["worker"] == "logs-w" and "job_id" not in ready


def test_in_text_a_newline_in_an_input_uri_is_escaped_and_forges_no_line(redis_url, tiny_models, tmp_path):
    settings = make_settings(
        redis_url, tiny_models, tmp_path, log_format="text", worker_name="text-w", input_roots=[str(tmp_path)]
    )
    forged = "FAKE 2026-01-01 00:00:00,000 INFO forged: line"
    # %0A: a newline once the worker decodes the file URI's path
    uri = (tmp_path / "gone").as_uri() + "%0A" + forged.replace(" ", "%20") + ".png"
    log_path = tmp_path / "worker.log"
    proc = WorkerProcess(settings, log_path).start()
    try:
        with Client(settings) as client:
            job = client.submit({"mode": "img2img", "prompt": "x", "image": uri, **TINY})
            final = client.wait(job, timeout=120)
        assert final.state is JobState.FAILED
    finally:
        assert proc.stop() == 0, proc.log()
    lines = Path(log_path).read_text(encoding="utf-8").splitlines()
    assert not [line for line in lines if line.startswith("FAKE")]
    [failed] = [line for line in lines if f"job {job} failed: bad_input" in line]
    assert forged in failed, failed
