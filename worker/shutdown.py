"""When the worker was told to stop (SIGTERM), and when its grace period ends.

Built first, so what must stop in time is given the deadline at construction: the engine (no new
micro-batch, and the running one stops at the deadline), its step check, and the hand-back of
jobs still storing. Times are monotonic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

StopDeadline = Callable[[], float | None]  # the grace period's end; None while serving


def never() -> float | None:
    """The deadline of an engine that no worker stops (tests, tools)."""
    return None


class Shutdown:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.since: float | None = None  # when SIGTERM arrived

    @property
    def stopping(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def deadline(self) -> float | None:
        """When a stopping worker must give its jobs back; None while serving."""
        return None if self.since is None else self.since + self.grace_s
