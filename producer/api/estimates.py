"""How fast the queues drain, for a queued job's ETA: one counter read per second at most.

Each API process samples the count of jobs taken off the queues (`StatusReader.taken`) as
requests come, and keeps five minutes of samples; the rate is the change across them. A
queued job's ETA is its estimated position plus one, over that rate. With under 5 s of
samples, or no job taken in them, there is no rate and the ETA is null.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from kandinsky_batch.store.reads import StatusReader

WINDOW_S = 300.0
MIN_SPAN_S = 5.0


class DrainRate:
    def __init__(self, reader: StatusReader) -> None:
        self.reader = reader
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def due(self) -> bool:
        """Whether the next rate reads the counter (a second since the last read)."""
        with self._lock:
            return not self._samples or time.monotonic() - self._samples[-1][0] >= 1.0

    def per_s(self, sample: bool = True) -> float | None:
        """Jobs taken off the queues per second lately, or None if not known yet.

        Without `sample` it never reads Redis (for callers on the event loop, which sample in a
        thread when `due`)."""
        now = time.monotonic()
        with self._lock:
            if sample and (not self._samples or now - self._samples[-1][0] >= 1.0):
                self._samples.append((now, self.reader.taken()))
            while self._samples and now - self._samples[0][0] > WINDOW_S:
                self._samples.popleft()
            if not self._samples:
                return None
            (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        if t1 - t0 < MIN_SPAN_S or n1 <= n0:
            return None
        return (n1 - n0) / (t1 - t0)

    def eta_s(self, position: int, sample: bool = True) -> float | None:
        rate = self.per_s(sample)
        return round((position + 1) / rate, 1) if rate else None
