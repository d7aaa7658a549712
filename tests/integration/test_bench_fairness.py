"""bench/fairness.py in its short form: a real API and worker, tenants with keys of their own, a
small backlog. It checks the benchmark runs and that every figure it prints is there and sane, not
the targets: those are the benchmark's to report at full size (bench/README.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_bench_api_load import results

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_short_fairness_benchmark_prints_every_figure(redis_url: str):
    args = ["--backlog", "48", "--singles", "2", "--every", "0.5", "--pair", "24"]
    proc = subprocess.run(
        [sys.executable, "bench/fairness.py", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "KANDINSKY_BATCH_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = results(proc.stdout)
    assert 0 < found["small_tenant_wait_p50"] <= found["small_tenant_wait_max"]
    assert found["micro_batch_wall"] > 0 and found["big_tenant_micro_batches_started_during_a_wait_max"] >= 0
    assert found["equal_c_succeeded_at_half"] + found["equal_d_succeeded_at_half"] >= 24
    assert 0 < found["equal_min_over_max"] <= 1
    assert found["weighted_share_ratio"] > 0 and found["weighted_e_succeeded_at_half"] > 0
