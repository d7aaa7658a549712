"""A real worker process with faults injected for the fault tests (never used in production).

KB_TEST_STEP_SLEEP_S   sleep this long after every denoising step (makes jobs long enough to kill)
KB_TEST_KILL_PROMPT    SIGKILL this process when a job with this prompt starts generating
KB_TEST_RAISE_PROMPT   raise an unexpected ValueError when a job with this prompt starts generating
KB_TEST_KILL_AFTER_TAKE  SIGKILL this process right after it took a message to fill a micro-batch
KB_TEST_PUT_SLEEP_S    sleep this long before every upload (uploads still pending at a SIGTERM)
KB_TEST_FAIL_PUT_KEY   fail the first KB_TEST_FAIL_PUTS uploads whose key holds this text (default 1)
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import worker.engine as engine_module
from kandinsky_batch.errors import StorageUnavailable
from kandinsky_batch.store.taken import TakenStore
from producer.cli.main import main

STEP_SLEEP_S = float(os.environ.get("KB_TEST_STEP_SLEEP_S", "0"))
KILL_PROMPT = os.environ.get("KB_TEST_KILL_PROMPT")
RAISE_PROMPT = os.environ.get("KB_TEST_RAISE_PROMPT")
KILL_AFTER_TAKE = os.environ.get("KB_TEST_KILL_AFTER_TAKE") == "1"
PUT_SLEEP_S = float(os.environ.get("KB_TEST_PUT_SLEEP_S", "0"))
FAIL_PUT_KEY = os.environ.get("KB_TEST_FAIL_PUT_KEY")
FAIL_PUTS = [int(os.environ.get("KB_TEST_FAIL_PUTS", "1"))]
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
    put = self.storage.put

    def faulty_put(key: str, data: bytes, content_type: str) -> str:
        time.sleep(PUT_SLEEP_S)
        if FAIL_PUT_KEY and FAIL_PUT_KEY in key and FAIL_PUTS[0] > 0:
            FAIL_PUTS[0] -= 1
            raise StorageUnavailable("an injected upload failure")
        return put(key, data, content_type)

    self.storage.put = faulty_put  # type: ignore[method-assign]


engine_module.Engine.__init__ = _faulty_init  # type: ignore[method-assign]

if KILL_AFTER_TAKE:
    _original_take = TakenStore.take

    def _take_then_die(self: TakenStore, *args: Any, **kwargs: Any) -> Any:
        taken = _original_take(self, *args, **kwargs)
        if taken:
            os.kill(os.getpid(), signal.SIGKILL)
        return taken

    TakenStore.take = _take_then_die  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(["worker", *sys.argv[1:]]))
