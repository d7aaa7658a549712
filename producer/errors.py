"""The error tree. Every error carries a short machine `code` stored with the job.

KandinskyBatchError
├── PermanentError            never retried: the job fails at once
│   ├── InvalidSpec           invalid_spec      bad field, unknown field, wrong mode inputs
│   ├── BadMessage            bad_message       a queue message that is not our format
│   ├── UnsupportedMode       unsupported_mode  mode not served by this worker
│   ├── BadInput              bad_input         unreadable / too large / forbidden input image
│   ├── OutOfMemory           out_of_memory     still OOM with a batch of one image
│   └── AttemptsExhausted     attempts_exhausted  the job kept killing workers
├── TransientError            retried with backoff up to a limit
│   ├── StorageUnavailable    storage_unavailable
│   └── BrokerUnavailable     broker_unavailable
└── NotFound                  not_found         unknown job or batch id (producer side)
"""

from __future__ import annotations


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


class TransientError(KandinskyBatchError):
    code = "transient_error"


class StorageUnavailable(TransientError):
    code = "storage_unavailable"


class BrokerUnavailable(TransientError):
    code = "broker_unavailable"


class NotFound(KandinskyBatchError):
    code = "not_found"


def compute_backoff(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff for retry `attempt` (1-based), capped at `max_s`."""
    return float(min(max_s, base_s * 2 ** max(0, attempt - 1)))
