"""The walking skeleton: CLI submit -> Redis -> real worker process -> storage -> status."""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from PIL import Image

from kandinsky_batch.broker import make_celery
from kandinsky_batch.keys import TASK_NAME, job_id
from kandinsky_batch.schema import JobState, Mode
from producer.cli.main import main
from producer.client import Client

pytestmark = pytest.mark.integration

TINY = ["--height", "64", "--width", "64", "--steps", "2", "--prior-steps", "2"]


def path_of(uri: str) -> Path:
    return Path(urlparse(uri).path)


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_submit_runs_through_the_worker_to_storage_and_status(worker, module_settings, cli_env, capsys):
    # Given a running worker, when a prompt is submitted through the CLI
    code, out = cli_json(capsys, "submit", "--prompt", "a lighthouse at dawn", *TINY, "--json")
    assert code == 0 and len(out["job_ids"]) == 1
    job = out["job_ids"][0]
    # ... and waited for
    assert main(["wait", job, "--timeout", "120"]) == 0
    code, status = cli_json(capsys, "status", job, "--json")
    # Then the job succeeded once, with a 64x64 RGB PNG and its metadata in storage
    assert status["state"] == "succeeded" and status["attempts"] == 1 and status["error"] is None
    [png] = status["outputs"]
    image = Image.open(path_of(png))
    assert (image.format, image.size, image.mode) == ("PNG", (64, 64), "RGB")
    params = json.loads(image.text["parameters"])
    assert params["seed"] == status["seed"]
    meta = json.loads(path_of(status["metadata"]).read_text())
    assert meta["spec"]["prompt"] == "a lighthouse at dawn"
    assert meta["seed"] == status["seed"]
    assert meta["models"]["prior"]["id"] == module_settings.prior_model
    assert meta["versions"]["diffusers"] and meta["timings"]["generate_s"] > 0
    assert meta["outputs"] == [png]


def test_a_batch_file_with_a_non_english_prompt_succeeds(worker, client: Client, tmp_path: Path):
    path = tmp_path / "jobs.jsonl"
    lines = [
        {"prompt": p, "height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
        for p in ("Кошка в космосе", "宇宙里的猫", "a fox")
    ]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    result = client.submit_batch(path)
    assert len(result.job_ids) == 3 and not result.errors
    final = client.wait(result.batch_id, timeout=120)
    assert final.counts[JobState.SUCCEEDED] == 3
    for jid in result.job_ids:
        assert path_of(client.status_store.job(jid).outputs[0]).exists()
    # the worker that finished the batch wrote its manifest: one line per job
    deadline = time.monotonic() + 10
    while client.status_store.batch(result.batch_id).manifest is None and time.monotonic() < deadline:
        time.sleep(0.1)
    manifest = client.status_store.batch(result.batch_id).manifest
    assert manifest is not None
    lines = [json.loads(line) for line in path_of(manifest).read_text(encoding="utf-8").splitlines()]
    assert [line["job_id"] for line in lines] == result.job_ids
    assert all(line["state"] == "succeeded" and line["outputs"] and line["spec"] for line in lines)


def test_invalid_spec_is_refused_at_submit_naming_the_field(cli_env, capsys):
    code = main(["submit", "--prompt", "x", "--height", "100", "--json"])
    err = capsys.readouterr().err
    assert code != 0
    assert "height" in err and "multiple of 64" in err


def test_malformed_messages_fail_their_jobs_and_the_worker_keeps_serving(
    worker, client: Client, module_settings
):
    app = make_celery(module_settings)
    queue = module_settings.queue_for(Mode.TEXT2IMG)
    # a spec that is invalid at the worker (the second validation)
    app.send_task(
        TASK_NAME,
        kwargs={
            "v": 1,
            "batch_id": "bad1",
            "shared": {},
            "jobs": [{"index": 0, "spec": {"prompt": "x", "height": 65}}],
        },
        queue=queue,
    )
    # an envelope of the wrong version
    app.send_task(
        TASK_NAME, kwargs={"v": 99, "batch_id": "bad2", "jobs": [{"index": 0, "spec": {}}]}, queue=queue
    )
    # something that is not our format at all
    app.send_task(TASK_NAME, args=["garbage"], queue=queue)
    app.send_task(TASK_NAME, kwargs={"hello": "world"}, queue=queue)
    app.close()
    good = client.submit(
        {
            "prompt": "still serving",
            "height": 64,
            "width": 64,
            "num_inference_steps": 2,
            "prior_num_inference_steps": 2,
        }
    )
    assert client.wait(good, timeout=120).state is JobState.SUCCEEDED
    bad1 = client.wait(job_id("bad1", 0), timeout=30)
    assert (
        bad1.state is JobState.FAILED and bad1.error.code == "invalid_spec" and "height" in bad1.error.message
    )
    bad2 = client.wait(job_id("bad2", 0), timeout=30)
    assert bad2.state is JobState.FAILED and bad2.error.code == "bad_message"
    assert worker.alive()


def test_unknown_id_is_not_found_not_pending(cli_env, capsys):
    assert main(["status", "no-such-job-3"]) == 2
    assert "not_found" in capsys.readouterr().err
    assert main(["status", "nobatch"]) == 2
