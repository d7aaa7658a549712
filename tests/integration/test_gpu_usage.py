"""GPU-seconds and cost add up: each stored job's metadata, its batch, its tenant, the worker's metrics.

Two tenants' jobs (two modes, jobs of one and of two images) run over the HTTP API on one real
worker with `COST_PER_GPU_HOUR` set, then jobs without a tenant on a worker without it. Every sum
is checked against the sum over the jobs' own metadata (`B/J.json`), per mode: the store counts
integer micro-seconds and billionths, so sums agree within float rounding.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from kandinsky_batch.gpu_time import share
from kandinsky_batch.schema import JobSpec, JobState
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import metadata_key
from kandinsky_batch.submit_one import OneJob, submit_one
from producer.client import Client
from producer.http_client import HttpClient
from producer.launch import worker_env
from tests.conftest import WorkerProcess, make_settings
from tests.helpers.images import png_url
from tests.integration.conftest import auth, free_port, wait_for
from tests.integration.test_worker_metrics import Scrape

pytestmark = pytest.mark.integration

RATE = 2.5  # per GPU-hour
TINY: dict[str, Any] = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
NANO = 1e-9  # the store counts cost in billionths: a job's cost is exact to half of one


@pytest.fixture(scope="module")
def module_settings(redis_url: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The worker of this module prices its GPU time, and serves its metrics."""
    root = tmp_path_factory.mktemp("gpu-usage")
    return make_settings(
        redis_url,
        tiny_models,
        root,
        cost_per_gpu_hour=RATE,
        metrics_port=free_port(),
        metrics_host="127.0.0.1",
        webhooks=False,
    )


def metrics_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.metrics_port}/metrics"


def lines(*objs: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def wait_batch(http: httpx.Client, batch_id: str, key: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        batch = http.get(f"/v1/batches/{batch_id}", headers=auth(key)).json()
        if batch["done"]:
            return dict(batch)
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)


def metadata_of(client: Client, batch_id: str) -> list[dict[str, Any]]:
    """Each succeeded job's `B/J.json`."""
    found = []
    for job in client.jobs(batch_id):
        assert job.state is JobState.SUCCEEDED, job
        found.append(json.loads(client.storage.get(metadata_key(batch_id, job.job_id))))
    return found


def sums(metas: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mode -> the GPU-seconds and cost of these jobs' metadata."""
    by_mode: dict[str, dict[str, float]] = defaultdict(lambda: {"gpu_seconds": 0.0, "cost": 0.0})
    for meta in metas:
        spent = by_mode[meta["spec"]["mode"]]
        spent["gpu_seconds"] += meta["gpu_seconds"]
        spent["cost"] += meta["cost"] or 0.0
    return dict(by_mode)


def assert_adds_up(view: dict[str, Any], expected: dict[str, dict[str, float]], priced: bool) -> None:
    """A batch view's or a tenant's usage's totals and modes equal `expected` (mode -> sums)."""
    assert set(view["by_mode"]) == set(expected)
    for mode, spent in expected.items():
        assert view["by_mode"][mode]["gpu_seconds"] == pytest.approx(spent["gpu_seconds"], rel=1e-9)
        if priced:
            assert view["by_mode"][mode]["cost"] == pytest.approx(spent["cost"], rel=1e-9, abs=NANO)
        else:
            assert view["by_mode"][mode]["cost"] is None
    total = sum(s["gpu_seconds"] for s in expected.values())
    assert view["gpu_seconds"] == pytest.approx(total, rel=1e-9)
    if priced:
        assert view["cost"] == pytest.approx(sum(s["cost"] for s in expected.values()), rel=1e-9, abs=NANO)
    else:
        assert view["cost"] is None


def test_gpu_seconds_and_cost_add_up_per_tenant_and_per_batch(
    server: str, make_key: Any, module_settings: Settings, worker: WorkerProcess
):
    keys = {"gpu-a": make_key("gpu-a"), "gpu-b": make_key("gpu-b")}
    batches: dict[str, list[str]] = {"gpu-a": [], "gpu-b": []}
    with httpx.Client(base_url=server, timeout=60) as http:
        # gpu-a: one upload of two modes, jobs of one and of two images; gpu-b: an upload and two
        # single jobs, sent at once so that the two tenants' jobs share the worker.
        upload = lines(
            {"prompt": "a fox", **TINY},
            {"prompt": "two foxes", "num_images": 2, **TINY},
            {"mode": "img2img", "prompt": "a red fox", "image": png_url(), "strength": 0.5, **TINY},
            {"prompt": "a fox at night", **TINY},
        )
        answer = http.post("/v1/batches", content=upload, headers=auth(keys["gpu-a"]))
        assert answer.status_code == 202, answer.text
        batches["gpu-a"].append(answer.json()["batch_id"])
        answer = http.post(
            "/v1/batches",
            content=lines({"prompt": "an owl", "num_images": 2, **TINY}, {"prompt": "a hare", **TINY}),
            headers=auth(keys["gpu-b"]),
        )
        assert answer.status_code == 202, answer.text
        batches["gpu-b"].append(answer.json()["batch_id"])
        for prompt in ("a lone owl", "a lone hare"):
            answer = http.post("/v1/jobs", json={"prompt": prompt, **TINY}, headers=auth(keys["gpu-b"]))
            assert answer.status_code == 202, answer.text
            batches["gpu-b"].append(answer.json()["batch_id"])

        views = {b: wait_batch(http, b, keys[t]) for t, ids in batches.items() for b in ids}
        usage = {t: http.get("/v1/usage", headers=auth(k)).json()["tenants"][t] for t, k in keys.items()}

    with Client(module_settings) as client:
        metas = {b: metadata_of(client, b) for ids in batches.values() for b in ids}
        sdk_views = {b: client.batch(b) for b in metas}
    for meta in (m for found in metas.values() for m in found):
        assert meta["gpu_seconds"] > 0, meta
        assert meta["cost"] == pytest.approx(meta["gpu_seconds"] * RATE / 3600, abs=NANO), meta
        # Its share of its micro-batch's generate call, which its timings record in milliseconds.
        images = len(meta["outputs"])
        assert meta["gpu_seconds"] == pytest.approx(
            meta["timings"]["generate_s"] * images / meta["batch"]["size"], abs=0.001
        )

    # Each batch's view (over HTTP and from both SDKs) sums its jobs' metadata, per mode.
    for batch_id, found in metas.items():
        assert views[batch_id]["counts"]["succeeded"] == len(found)
        assert_adds_up(views[batch_id], sums(found), priced=True)
        assert sdk_views[batch_id].model_dump(mode="json")["by_mode"] == views[batch_id]["by_mode"]
    first = batches["gpu-a"][0]
    cli = [sys.executable, "-m", "producer.cli", "status", first]
    env = worker_env(module_settings)
    shown = json.loads(subprocess.run([*cli, "--json"], env=env, capture_output=True, check=True).stdout)
    assert {k: shown[k] for k in ("gpu_seconds", "cost", "by_mode")} == {
        k: views[first][k] for k in ("gpu_seconds", "cost", "by_mode")
    }
    table = subprocess.run(cli, env=env, capture_output=True, check=True, text=True).stdout
    assert f"gpu {views[first]['gpu_seconds']:.3f} s · cost {views[first]['cost']:.6f}" in table
    with HttpClient(server, keys["gpu-a"]) as over_http:
        assert over_http.batch(batches["gpu-a"][0]).gpu_seconds == views[batches["gpu-a"][0]]["gpu_seconds"]
    assert set(views[batches["gpu-a"][0]]["by_mode"]) == {"text2img", "img2img"}

    # Each tenant's usage sums its batches, per mode.
    for tenant, ids in batches.items():
        tenant_sums: dict[str, dict[str, float]] = defaultdict(lambda: {"gpu_seconds": 0.0, "cost": 0.0})
        for batch_id in ids:
            for mode, spent in views[batch_id]["by_mode"].items():
                tenant_sums[mode]["gpu_seconds"] += spent["gpu_seconds"]
                tenant_sums[mode]["cost"] += spent["cost"]
        assert_adds_up(usage[tenant], dict(tenant_sums), priced=True)
        assert usage[tenant]["succeeded"] == sum(len(metas[b]) for b in ids)

    # The worker's counters equal the same sums, per mode and tenant.
    scrape = Scrape(metrics_url(module_settings))
    for tenant, ids in batches.items():
        for mode, spent in sums([m for b in ids for m in metas[b]]).items():
            labels = {"mode": mode, "tenant": tenant}
            got = scrape.value("kandinsky_batch_device_seconds_total", **labels)
            assert got == pytest.approx(spent["gpu_seconds"], rel=1e-9)
            assert scrape.value("kandinsky_batch_cost_total", **labels) == pytest.approx(
                spent["cost"], rel=1e-9, abs=NANO
            )


def test_without_a_rate_gpu_seconds_still_add_up_and_there_is_no_cost(
    redis_url: str, tiny_models: Path, tmp_path: Path
):
    settings = make_settings(
        redis_url, tiny_models, tmp_path, metrics_port=free_port(), metrics_host="127.0.0.1"
    )
    assert settings.cost_per_gpu_hour is None
    proc = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        with Client(settings) as client:
            batch_id = client.submit_batch(
                [{"prompt": "a heron", **TINY}, {"prompt": "two herons", "num_images": 2, **TINY}]
            ).batch_id
            view = client.wait(batch_id, timeout=180)
            metas = metadata_of(client, batch_id)
        assert all(meta["gpu_seconds"] > 0 and meta["cost"] is None for meta in metas)
        assert_adds_up(view.model_dump(mode="json"), sums(metas), priced=False)
        scrape = wait_for(
            lambda: (s := Scrape(metrics_url(settings))).value("kandinsky_batch_worker_busy") == 0 and s,
            30,
            "idle",
        )
        total = sum(meta["gpu_seconds"] for meta in metas)
        assert scrape.value(
            "kandinsky_batch_device_seconds_total", mode="text2img", tenant=""
        ) == pytest.approx(total, rel=1e-9)
        assert not scrape.nonzero("kandinsky_batch_cost_total")
    finally:
        assert proc.stop() == 0, proc.log()


def test_a_share_is_counted_once_however_many_times_its_job_is_stored(settings: Settings):
    """The count rides on the fenced `succeeded` move: a second store of the same job adds nothing."""
    spec = JobSpec.model_validate({"prompt": "counted once", **TINY})
    gpu = share(1_234_567, 4, 2, RATE)
    with Client(settings) as client:
        store = client.status_store
        ref = submit_one(store, settings, OneJob.seeded(spec), "once", tenant="gpu-once")
        assert store.start(ref, "w", 2, spec.wire())[0]
        assert store.succeed(ref, ["file:///x/0.png"], "file:///x.json", spent=("text2img", gpu))
        assert not store.succeed(ref, ["file:///x/0.png"], "file:///x.json", spent=("text2img", gpu))
        batch = client.batch("once")
        usage = store.usage("gpu-once")
    assert gpu.us == 617_284 and gpu.cost_n is not None
    for counted in (batch.model_dump(mode="json"), usage):
        assert counted["gpu_seconds"] == gpu.us / 1e6 == gpu.seconds
        assert counted["cost"] == gpu.cost_n / 1e9 == gpu.cost
        assert counted["by_mode"] == {"text2img": {"gpu_seconds": gpu.seconds, "cost": gpu.cost}}
