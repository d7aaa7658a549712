"""Guards so that any bytes on a queue are dropped with one warning instead of stopping the worker.

Anyone who can write to Redis can push anything onto a queue list. kombu's Redis transport pops
an item, decodes it and hands it to Celery; garbage there (not JSON, a JSON list, an envelope
whose body is not base64, ...) would make the worker exit or reconnect. The guard checks every
item popped from one of our task queues (kandinsky_batch.envelope.envelope_problem) before it
is delivered, and drops the bad ones: they were popped, never acknowledged as tasks, so nothing
else sees them. A good envelope whose call is not ours to run then fails its jobs with a code
(worker/messages.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import kombu.transport.redis as kombu_redis

from kandinsky_batch.envelope import envelope_problem
from kandinsky_batch.keys import TASK_NAME

log = logging.getLogger(__name__)
_original_loads = kombu_redis.loads
_original_deliver = kombu_redis.Transport._deliver
_queues: frozenset[str] = frozenset()


class Garbage:
    """What the tolerant decoder returns for an item that is not JSON at all."""

    def __init__(self, raw: Any, reason: str) -> None:
        self.raw, self.reason = raw, reason


def _tolerant_loads(raw: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return _original_loads(raw, *args, **kwargs)
    except (ValueError, TypeError, RecursionError) as exc:
        return Garbage(raw, f"not JSON ({type(exc).__name__})")


def _guarded_deliver(self: Any, message: Any, queue: str) -> Any:
    if queue in _queues or isinstance(message, Garbage):
        problem = message.reason if isinstance(message, Garbage) else envelope_problem(message, TASK_NAME)
        if problem is not None:
            raw = message.raw if isinstance(message, Garbage) else message
            log.warning(
                "dropped an item of queue %s that is not a task message: %s: %.200r", queue, problem, raw
            )
            return None
    return _original_deliver(self, message, queue)


def install(queues: Iterable[str]) -> None:
    """Check every item popped from `queues` (the worker's task queues) before Celery gets it."""
    global _queues
    _queues = frozenset(queues)
    kombu_redis.loads = _tolerant_loads  # type: ignore[assignment]
    kombu_redis.Transport._deliver = _guarded_deliver  # type: ignore[method-assign]
