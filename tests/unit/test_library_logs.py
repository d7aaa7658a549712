"""Loading the pipelines under the worker's log setup says nothing of torchvision, which is no
dependency, and lets the libraries' other warnings through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# In a process of its own: transformers warns once per process, and only before its first fallback.
LOAD = """
import logging, sys
from kandinsky_batch.logs import setup_logging
setup_logging("text", "INFO")
from worker.library_logs import route_library_logs
route_library_logs()
from kandinsky_batch.settings import Settings
from worker.pipelines import PipelineCache
PipelineCache(Settings(prior_model=sys.argv[1], device="cpu", dtype="float32", torch_threads=1)).prior()
logging.getLogger("transformers.utils.import_utils").warning("another transformers warning")
"""


def test_loading_the_prior_logs_no_torchvision_fallback(tiny_models: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANDINSKY_BATCH_")}
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(tiny_models / "prior")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "loading prior from" in done.stderr  # the load ran, and its log lines show
    assert "torchvision" not in done.stderr, done.stderr
    assert "WARNING transformers.utils.import_utils: another transformers warning" in done.stderr
