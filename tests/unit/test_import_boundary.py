"""Invariant 1: the producer side never imports torch."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_producer_package_leaves_torch_unimported():
    code = (
        "import sys, producer, producer.cli, producer.client, producer.submit, producer.status, "
        "producer.storage, producer.s3, producer.demo, producer.queue\n"
        "print('torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_worker_check_probe_does_not_load_torch():
    code = "import sys, worker.check\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
