"""A real Prometheus scrapes a real worker and the real API; KEDA's own query is evaluated live,
with jobs waiting at all three priorities.

The query is read from k8s/base/keda.yaml (its namespace and queue prefix swapped for this
test's), so the expression that scales the cluster is the one checked here mid-run.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kandinsky_batch.schema import Priority
from kandinsky_batch.settings import Settings
from producer.client import Client
from tests.conftest import IN_CI, WorkerProcess, make_settings
from tests.helpers.tenants import submit_as
from tests.integration.conftest import free_port, slow_worker, wait_for

pytestmark = pytest.mark.integration
KEDA = Path(__file__).resolve().parents[2] / "k8s" / "base" / "keda.yaml"
NAMESPACE = "live"
SLOW = {"height": 64, "width": 64, "num_inference_steps": 40, "prior_num_inference_steps": 2}
QUEUED = 10


def keda_query(settings: Settings) -> tuple[str, int]:
    """The base worker group's query, for this test's namespace and queues, and its jobs per pod."""
    [scaled] = [
        d
        for d in yaml.safe_load_all(KEDA.read_text())
        if d and d["metadata"]["name"] == "kandinsky-worker-base"
    ]
    query: str = scaled["spec"]["triggers"][0]["metadata"]["query"]
    query = re.sub(r'namespace="[^"]*"', f'namespace="{NAMESPACE}"', query)
    query = query.replace("kandinsky_batch\\\\.", f"{settings.queue_prefix}\\\\.")
    per_pod = int(re.search(r"/\s*(\d+)\)", query).group(1))  # type: ignore[union-attr]
    return query, per_pod


@pytest.fixture(scope="module")
def module_settings(redis_url: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    # One job per message and micro-batches of one image: the worker takes no extra messages, so the
    # queued jobs stay on the list for the query to count.
    folder = tmp_path_factory.mktemp("prometheus-live")
    return make_settings(
        redis_url, tiny_models, folder, chunk_size=1, max_batch_size=1, metrics_port=free_port()
    )


@pytest.fixture(scope="module")
def worker(module_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with slow_worker(module_settings, tmp_path_factory, 0.5) as proc:
        yield proc


@pytest.fixture(scope="module")
def prometheus(
    server: str, module_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        if IN_CI:
            pytest.fail("prometheus is not installed (.ci/run installs Debian's package)")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    work = tmp_path_factory.mktemp("prometheus")
    api = server.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "api", "static_configs": [{"targets": [api], "labels": {"namespace": NAMESPACE}}]},
            {
                "job_name": "worker",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{module_settings.metrics_port}"],
                        "labels": {"namespace": NAMESPACE},
                    }
                ],
            },
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and _ready(url), 60, "Prometheus")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def query(url: str, expr: str) -> list[float]:
    body = urllib.parse.urlencode({"query": expr}).encode()
    with urllib.request.urlopen(f"{url}/api/v1/query", data=body, timeout=30) as answer:
        payload = json.loads(answer.read())
    assert payload["status"] == "success", payload
    return [float(r["value"][1]) for r in payload["data"]["result"]]


def test_keda_query_counts_queued_jobs_and_the_busy_worker_mid_run(prometheus, worker, module_settings):
    expr, per_pod = keda_query(module_settings)
    with Client(module_settings) as client:
        batch = client.submit_batch([{"prompt": f"scaled {i}", **SLOW} for i in range(QUEUED - 6)])
        first = f"{batch.batch_id}-0"
        wait_for(lambda: client.status_store.job(first).progress.step >= 1, 60, "the first job to run")
        # Waiting at every priority, for two tenants and none: 3 normal, 3 high, 3 low.
        others = [
            submit_as(client, "acme", [{"prompt": f"high {i}", **SLOW} for i in range(3)], Priority.HIGH),
            submit_as(client, "globex", [{"prompt": f"low {i}", **SLOW} for i in range(3)], Priority.LOW),
        ]
        # ceil(9 / 8) + 1 = 3: had any priority gone uncounted, 6 waiting jobs would give 2
        expected = math.ceil((QUEUED - 1) / per_pod) + 1  # the waiting jobs' pods, plus the busy one
        wait_for(lambda: query(prometheus, expr) == [expected], 30, f"the KEDA query to give {expected}")
        assert client.status_store.job(first).state.value == "running"  # still the same moment
        busy = f'kandinsky_batch_worker_busy{{namespace="{NAMESPACE}",job="worker"}}'
        # Scraped off the worker itself (Prometheus adds new targets in its first few seconds).
        wait_for(lambda: query(prometheus, busy) == [1.0], 30, "the worker's own busy gauge")
        assert query(prometheus, expr) == [expected]  # and still the same moment
        for job_ids in others:
            client.cancel(job_ids[0].rsplit("-", 1)[0])
        client.cancel(batch.batch_id)
        client.wait(batch.batch_id, timeout=120)
        wait_for(lambda: query(prometheus, expr) == [0.0], 60, "the KEDA query to fall to 0")
        done = f'sum(kandinsky_batch_jobs_total{{namespace="{NAMESPACE}",outcome="canceled"}})'
        wait_for(
            lambda: query(prometheus, done) and query(prometheus, done)[0] >= 1, 30, "canceled jobs counted"
        )
