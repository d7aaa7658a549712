"""Worker processes forked from a server that has imported torch, diffusers and the worker already.

A worker's imports cost ~5 s of CPU, and a test run starts dozens of workers. Each is still a
process of its own running the real `kandinsky-batch worker` code, with its own environment, log,
signals and exit code: only the imports are done once, in multiprocessing's fork server. A worker
whose environment changes how those libraries import (HF_*, TRANSFORMERS_*, TORCH*) is started the
plain way.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from producer.launch import WorkerProcess

PRELOAD = [
    "producer.cli",
    "worker.celery_app",
    "worker.context",
    "worker.tasks",
    "worker.engine",
    "worker.pipelines",
    "diffusers.pipelines.kandinsky",
]
IMPORT_TIME_ENV = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TORCH", "DIFFUSERS_")

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def _run(module: str, env: dict[str, str], log_path: str) -> None:
    """The child: its output to the log, its environment, then the worker as `python -m` runs it."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    if module == "producer.cli":
        from producer.cli.main import main

        sys.exit(main(["worker"]))
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)  # reads its KB_TEST_* at import


class Forked:
    """A forked worker with the parts of `subprocess.Popen` that WorkerProcess and the tests use."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.pid: int = process.pid

    @property
    def returncode(self) -> int | None:
        code = self.process.exitcode
        return None if code is None else int(code)

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        return int(self.process.exitcode)

    def send_signal(self, sig: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkedWorkerProcess(WorkerProcess):
    """WorkerProcess whose process is forked from the preloaded server (see the module docstring)."""

    def open(self, env: dict[str, str]) -> Any:
        if any(key.startswith(IMPORT_TIME_ENV) for key in self.extra_env):
            return super().open(env)
        process = _context.Process(
            target=_run, args=(self.module, env, str(Path(self.log_path))), daemon=True
        )
        process.start()
        return Forked(process)
