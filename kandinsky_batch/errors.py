"""The error tree. Every error carries a short machine `code` stored with the job.

KandinskyBatchError
├── PermanentError            never retried: the job fails at once
│   ├── InvalidSpec           invalid_spec        bad field, unknown field, wrong mode inputs
│   ├── BadMessage            bad_message         a queue message that is not our format
│   ├── UnsupportedMode       unsupported_mode    mode not served by this worker
│   ├── BadInput              bad_input           unreadable / too large / forbidden input image
│   ├── OutOfMemory           out_of_memory       still OOM with a batch of one image
│   ├── AttemptsExhausted     attempts_exhausted  the job kept killing workers
│   └── InternalError         internal_error      anything unexpected (a bug): the traceback is logged
├── TransientError            retried with backoff up to a limit
│   └── StorageUnavailable    storage_unavailable
├── NotFound                  not_found           unknown job or batch id (producer side)
├── OverQuota                 over_quota          a tenant's cap on unfinished jobs is reached (producer side)
└── ModelUnavailable          model_unavailable   a model setting names no loadable model (the worker stops at start)

ControlFlow                   not errors: how the engine tells the task what to do next
├── HandBack                  the worker is stopping: these jobs go back to the queue
├── Canceled                  every job of the running micro-batch was canceled: stop between steps
└── LeaseLost                 this worker no longer holds the job's lease: stop, write nothing more
"""

from __future__ import annotations

from typing import Any


class KandinskyBatchError(Exception):
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PermanentError(KandinskyBatchError):
    code = "permanent_error"


class InvalidSpec(PermanentError):
    code = "invalid_spec"


class BadMessage(PermanentError):
    code = "bad_message"


class UnsupportedMode(PermanentError):
    code = "unsupported_mode"


class BadInput(PermanentError):
    code = "bad_input"


class OutOfMemory(PermanentError):
    code = "out_of_memory"


class AttemptsExhausted(PermanentError):
    code = "attempts_exhausted"


class InternalError(PermanentError):
    code = "internal_error"


class TransientError(KandinskyBatchError):
    code = "transient_error"


class StorageUnavailable(TransientError):
    code = "storage_unavailable"


class NotFound(KandinskyBatchError):
    code = "not_found"


class OverQuota(KandinskyBatchError):
    """A submit that would take a tenant past its cap on unfinished jobs; `refused` are not sent."""

    code = "over_quota"

    def __init__(self, message: str, refused: list[int] | None = None) -> None:
        super().__init__(message)
        self.refused = refused or []


class ModelUnavailable(KandinskyBatchError):
    """A `*_MODEL` setting that names no loadable model: the message names the variable and its value."""

    code = "model_unavailable"


class ControlFlow(Exception):
    """Raised by the engine, caught by the task."""


class HandBack(ControlFlow):
    """The worker is stopping and its grace period is over: these jobs go back to the queue."""

    def __init__(self, jobs: list[Any] | None = None) -> None:
        super().__init__("shutting down")
        self.jobs: list[Any] = jobs or []


class Canceled(ControlFlow):
    """Every job of the running micro-batch was canceled: stop between steps."""


class LeaseLost(ControlFlow):
    """This worker's lease on a job expired (it was paused, or cut off from Redis): another worker
    may run the job now, so this one must not write anything more for it."""


def compute_backoff(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff for retry `attempt` (1-based), capped at `max_s`."""
    return float(min(max_s, base_s * 2 ** max(0, attempt - 1)))
