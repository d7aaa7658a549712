"""bench/api_load.py in its short form: a real API (two workers) under wrk and httpx clients, and a
streamed upload beside `submit_batch`, for a second or so per phase. It checks the benchmark runs and
that no request of it fails, not how fast: the figures are the benchmark's to report."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.tools import require_system_tool

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def results(stdout: str) -> dict[str, float]:
    return {
        line.split()[1]: float(line.split()[2]) for line in stdout.splitlines() if line.startswith("RESULT ")
    }


@pytest.mark.parametrize("client", ["wrk", "httpx"])
def test_the_short_api_benchmark_runs_with_no_failed_request(client: str, redis_url: str):
    if client == "wrk":  # Debian's wrk: skipped where it is not installed, a failure in CI
        require_system_tool("wrk", "apt-get install wrk")
    args = ["--client", client, "--api-workers", "2", "--phase-seconds", "1", "--requests", "300"]
    args += ["--concurrency", "16", "--lines", "2000", "--max-wall", "240"]
    proc = subprocess.run(
        [sys.executable, "bench/api_load.py", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "KANDINSKY_BATCH_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = results(proc.stdout)
    for metric in ("api_healthz_c16", "api_post_jobs_c16", "api_get_job_c16"):
        assert found[f"{metric}_req_per_s"] > 0 and found[f"{metric}_errors"] == 0, metric
        assert 0 < found[f"{metric}_p50_ms"] <= found[f"{metric}_p99_ms"], metric
    assert found["api_upload_lines"] == 2000 and found["api_upload_vs_sdk"] > 0
