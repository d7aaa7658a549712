"""A client generated from docs/openapi.json (openapi-python-client) round-trips a job through a
real uvicorn API and a real worker: submit, poll to succeeded, fetch the image, read the batch,
and read a refusal as a typed problem document. What the document says is what the server does."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
PACKAGE = "kb_generated_client"
TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
PNG = b"\x89PNG\r\n\x1a\n"
# The generator reads JSON, +json and text/* answers: an image is bytes to it, a manifest text.
CONFIG = (
    "content_type_overrides:\n  image/png: application/octet-stream\n  application/x-ndjson: text/plain\n"
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    venv = str(Path(sys.executable).parent)
    cli = shutil.which("openapi-python-client", path=venv)
    assert cli, "openapi-python-client is a dev dependency"
    root = tmp_path_factory.mktemp("client")
    (root / "config.yaml").write_text(CONFIG)
    run = subprocess.run(
        [cli, "generate", "--path", str(DOC), "--config", str(root / "config.yaml"), "--meta", "none",
         "--output-path", str(root / PACKAGE)],
        capture_output=True, text=True, timeout=300, cwd=root,
        env={**os.environ, "PATH": os.pathsep.join([venv, os.environ.get("PATH", "")])},  # its ruff hooks
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def part(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_a_generated_client_round_trips_a_job(generated: ModuleType, server: str, acme_key: str) -> None:
    models = part("models")
    submit_job, get_job, get_image, get_batch = (
        part(f"api.default.{name}") for name in ("submit_job", "get_job", "get_image", "get_batch")
    )
    with generated.AuthenticatedClient(base_url=server, token=acme_key, timeout=30) as client:
        spec = models.JobRequest(prompt="a generated lighthouse", **TINY)
        answer = submit_job.sync_detailed(client=client, body=spec)
        assert answer.status_code == 202, answer.content
        job = answer.parsed
        assert isinstance(job, models.JobView) and job.state.value in ("queued", "running")
        assert job.urls.get == answer.headers["location"]

        deadline = time.monotonic() + 120
        while job.state.value not in ("succeeded", "failed", "canceled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
            job = get_job.sync(job.job_id, client=client)
            assert isinstance(job, models.JobView)
        assert job.state is models.JobState.SUCCEEDED and job.seed is not None and job.queue is None
        assert isinstance(job.finished_at, float) and job.finished_at >= job.created_at

        image = get_image.sync_detailed(job.job_id, 0, client=client)
        assert image.status_code == 200 and image.content.startswith(PNG)

        batch = get_batch.sync(job.batch_id, client=client)
        assert isinstance(batch, models.BatchView) and batch.done and batch.total == 1
        assert batch.counts.additional_properties["succeeded"] == 1


def test_a_refusal_comes_back_as_a_typed_problem_document(
    generated: ModuleType, server: str, acme_key: str
) -> None:
    models = part("models")
    submit_job = part("api.default.submit_job")
    with generated.AuthenticatedClient(base_url=server, token=acme_key, timeout=30) as client:
        answer = submit_job.sync_detailed(client=client, body=models.JobRequest(prompt="x", height=65))
    problem = answer.parsed
    assert answer.status_code == 422 and isinstance(problem, models.ProblemDocument), answer.content
    assert problem.status == 422 and problem.fields == ["height"] and problem.code == "invalid_spec"
