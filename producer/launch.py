"""Start a real `kandinsky-batch worker` process and wait until it is ready (the demo, the tests).

It runs the worker as a child process (`python -m producer.cli worker`), so nothing here
imports the worker or torch. Ready means the worker's ready file exists: its pipelines are
warm and it consumes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kandinsky_batch.settings import Settings

ENV_PREFIX = "KANDINSKY_BATCH_"


def worker_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment less any `KANDINSKY_BATCH_*`, plus `settings` (and `extra`) as variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return {**env, **settings.as_env(), **(extra or {})}


class WorkerProcess:
    """One worker process: `start()` waits for ready, `stop()` sends SIGTERM (then SIGKILL)."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        module: str = "producer.cli",
        env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        self.module = module
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> WorkerProcess:
        """Start it and return once it is ready; RuntimeError (with its log) if it exits or is late."""
        self.settings.ready_file.unlink(missing_ok=True)
        self.proc = self.open(worker_env(self.settings, self.extra_env))
        deadline = time.monotonic() + timeout
        while not self.settings.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker was not ready after {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.1)
        return self

    def open(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """The process itself: `python -m <module> worker` with `env`, its output in the log."""
        args = [sys.executable, "-m", self.module] + (["worker"] if self.module == "producer.cli" else [])
        with self.log_path.open("ab") as log:
            return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self, tail: int = 5000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, so it finishes or hands back its job; SIGKILL after `timeout` s. Its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
