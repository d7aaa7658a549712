"""Storing in the background, with real worker processes: its invariants under SIGTERM and failures.

The fault worker (tests/helpers/fault_worker.py) slows or fails uploads, so jobs can be caught generated but
not yet stored.
"""

from __future__ import annotations

import time

import pytest

from kandinsky_batch.keys import JobField
from kandinsky_batch.schema import JobState
from producer.client import Client
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration

TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


def generated(client: Client, jobs: list[str]) -> bool:
    """Every job has run its last denoising step (it is storing now, or stored)."""
    states = [client.status_store.job(j) for j in jobs]
    return all(st.progress.total and st.progress.step >= st.progress.total for st in states)


def test_sigterm_lets_pending_uploads_finish_within_the_grace_period(fault_settings, start_worker) -> None:
    settings = fault_settings(shutdown_grace_s=30)
    proc = start_worker(settings, step_sleep=0.0, env={"KB_TEST_PUT_SLEEP_S": "1.0"})
    with Client(settings) as client:
        jobs = [client.submit({"prompt": f"store me {i}", **TINY, "seed": i}) for i in range(2)]
        wait_for(lambda: generated(client, jobs), 60, "both images to be generated")
        assert client.status_store.state(jobs[1]) is JobState.RUNNING  # still storing
        started = time.monotonic()
        assert proc.stop(timeout=40) == 0
        assert time.monotonic() - started < 30
        finals = [client.status_store.job(j) for j in jobs]
    assert [f.state for f in finals] == [JobState.SUCCEEDED] * 2
    assert [f.attempts for f in finals] == [1, 1]


def test_uploads_still_pending_past_the_grace_period_are_handed_back(fault_settings, start_worker) -> None:
    settings = fault_settings(shutdown_grace_s=1)
    proc = start_worker(settings, step_sleep=0.0, env={"KB_TEST_PUT_SLEEP_S": "4.0"})
    with Client(settings) as client:
        jobs = [client.submit({"prompt": f"slow store {i}", **TINY, "seed": i}) for i in range(2)]
        wait_for(lambda: generated(client, jobs), 60, "both images to be generated")
        assert proc.stop(timeout=40) == 0  # exits after the grace period and the hand-back
        assert [client.status_store.state(j) for j in jobs] == [JobState.QUEUED] * 2
        start_worker(settings, step_sleep=0.0, name="after")
        finals = [client.wait(j, timeout=90) for j in jobs]
    assert [f.state for f in finals] == [JobState.SUCCEEDED] * 2
    assert [f.attempts for f in finals] == [2, 2]


def test_an_upload_that_gives_up_hands_back_only_its_own_job(fault_settings, start_worker) -> None:
    # Given three jobs in one micro-batch, and the first upload of the middle one failing for good
    settings = fault_settings(upload_retry_window_s=0.5)
    with Client(settings) as client:
        jobs = [client.submit({"prompt": f"upload {i}", **TINY, "seed": i}) for i in range(3)]
        start_worker(settings, step_sleep=0.0, env={"KB_TEST_FAIL_PUT_KEY": f"{jobs[1]}/"})
        finals = [client.wait(j, timeout=90) for j in jobs]
        retries = [client.redis.hget(client.status_store.keys.job(j), JobField.RETRIES) for j in jobs]
    # Then only that job went back and ran again; its batch-mates were stored the first time
    assert [f.state for f in finals] == [JobState.SUCCEEDED] * 3
    assert [f.attempts for f in finals] == [1, 2, 1]
    assert retries[0] is None and retries[2] is None and retries[1] is not None
