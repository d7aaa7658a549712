"""A real worker process with faults injected for the fault tests (never used in production).

KB_TEST_STEP_SLEEP_S   sleep this long after every denoising step (makes jobs long enough to kill)
KB_TEST_KILL_PROMPT    SIGKILL this process when a job with this prompt starts generating
KB_TEST_RAISE_PROMPT   raise an unexpected ValueError when a job with this prompt starts generating
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import worker.engine as engine_module
from producer.cli import main

STEP_SLEEP_S = float(os.environ.get("KB_TEST_STEP_SLEEP_S", "0"))
KILL_PROMPT = os.environ.get("KB_TEST_KILL_PROMPT")
RAISE_PROMPT = os.environ.get("KB_TEST_RAISE_PROMPT")
_original_init = engine_module.Engine.__init__


def _faulty_init(self: engine_module.Engine, *args: Any, **kwargs: Any) -> None:
    _original_init(self, *args, **kwargs)
    generate = self.generate_fn

    def faulty(cache: Any, items: list[Any], on_step: Any) -> Any:
        if KILL_PROMPT and any(it.spec.prompt == KILL_PROMPT for it in items):
            os.kill(os.getpid(), signal.SIGKILL)
        if RAISE_PROMPT and any(it.spec.prompt == RAISE_PROMPT for it in items):
            raise ValueError("an injected bug for this parameter mix")

        def slow_step(step: int, total: int) -> None:
            time.sleep(STEP_SLEEP_S)
            on_step(step, total)

        return generate(cache, items, slow_step)

    self.generate_fn = faulty


engine_module.Engine.__init__ = _faulty_init  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
