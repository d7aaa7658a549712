"""The short chaos run (about a minute of faults): tests/helpers/chaos.py has the faults and the checks.

`bench/chaos.py` runs the long form; its figures are in bench/README.md.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.helpers.chaos import chaos_run

pytestmark = pytest.mark.integration


@pytest.mark.timeout(600)
def test_a_minute_of_faults_loses_strands_and_duplicates_nothing(tiny_models: Path, tmp_path: Path):
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    seed = random.randrange(10**6)
    with chaos_run(tmp_path, tiny_models, workers=3, seed=seed) as chaos:
        # Small bursts keep the drain short on a 2-core CI machine; bench/chaos.py uses 10-40.
        report = chaos.run(duration_s=60, gap_s=(2.0, 4.0), drain_timeout_s=300, burst=(5, 15))
    print(f"chaos seed {seed}:", *report.lines(), sep="\n")
    assert report.problems == []
    assert (report.lost, report.duplicated, report.late_writes) == (0, 0, 0)
    assert report.jobs >= 20 and sum(report.faults.values()) >= 12
