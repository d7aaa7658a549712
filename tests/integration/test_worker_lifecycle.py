"""Worker start and readiness: it refuses to start against unusable storage; `worker check` tells ready."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import WorkerProcess, make_settings, settings_env
from tests.helpers.s3server import TEST_KEY, running_s3_server

pytestmark = pytest.mark.integration


def check(settings) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", "worker", "check"],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_worker_check_is_ready_only_while_a_warm_worker_serves(redis_url, tiny_models, tmp_path):
    settings = make_settings(redis_url, tiny_models, tmp_path)
    before = check(settings)
    assert before.returncode == 1 and "no ready file" in before.stderr
    proc = WorkerProcess(settings, tmp_path / "w.log").start()
    try:
        ready = check(settings)
        assert ready.returncode == 0 and ready.stdout.strip() == "ready"
    finally:
        assert proc.stop() == 0
    after = check(settings)
    assert after.returncode == 1


def test_worker_check_fails_when_redis_is_unreachable(redis_url, tiny_models, tmp_path):
    settings = make_settings("redis://127.0.0.1:1/0", tiny_models, tmp_path)
    result = check(settings)
    assert result.returncode == 1 and "cannot reach Redis at" in result.stderr


def test_a_missing_bucket_stops_the_worker_at_start_with_a_clear_message(redis_url, tiny_models, tmp_path):
    with running_s3_server() as endpoint:
        settings = make_settings(
            redis_url,
            tiny_models,
            tmp_path,
            storage_url="s3://no-such-bucket/x",
            s3_endpoint_url=endpoint,
            s3_region="us-east-1",
            s3_access_key_id=TEST_KEY,
            s3_secret_access_key=TEST_KEY,
        )
        proc = WorkerProcess(settings, tmp_path / "w.log")
        with pytest.raises(RuntimeError, match="exited with 1"):
            proc.start(timeout=60)
    assert "no-such-bucket" in proc.log() and "does not exist" in proc.log()
    assert "Traceback" not in proc.log()
