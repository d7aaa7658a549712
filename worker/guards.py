"""Guards so that garbage on a queue is dropped with a log line instead of stopping the worker.

Anyone who can write to Redis can push anything onto a queue list. Two kinds of
garbage would otherwise stop a Celery worker (and, put back on the queue at exit,
every worker after it): a list item that is not JSON (kombu's Redis transport
fails decoding it) and a task message whose body is not `[args, kwargs, embed]`.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import kombu.transport.redis as kombu_redis
from celery.exceptions import InvalidTaskError
from celery.worker.strategy import default as default_strategy

log = logging.getLogger(__name__)
_original_loads = kombu_redis.loads


def _undecodable(raw: Any) -> dict[str, Any]:
    """A stand-in message that Celery rejects as undecodable (and so acks and logs)."""
    log.error("dropping a queue item that is not a kombu message: %.200r", raw)
    return {
        "body": "",
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {},
        "properties": {
            "delivery_tag": uuid.uuid4().hex,
            "delivery_info": {"exchange": "", "routing_key": ""},
        },
    }


def _tolerant_loads(raw: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        value = _original_loads(raw, *args, **kwargs)
    except ValueError:
        return _undecodable(raw)
    return value if isinstance(value, dict | list) else _undecodable(raw)


def install() -> None:
    """Make kombu's Redis transport survive list items that are not JSON."""
    kombu_redis.loads = _tolerant_loads  # type: ignore[assignment]


def checked_strategy(task: Any, app: Any, consumer: Any, **kwargs: Any) -> Any:
    """Celery's default strategy, refusing (InvalidTaskError) bodies not shaped [args, kwargs, embed]."""
    handle = default_strategy(task, app, consumer, **kwargs)

    def checked(message: Any, body: Any, *args: Any, **kw: Any) -> Any:
        payload = body if body is not None else message.decode()
        if not (
            isinstance(payload, list | tuple)
            and len(payload) == 3
            and isinstance(payload[0], list | tuple)
            and isinstance(payload[1], dict)
        ):
            raise InvalidTaskError(f"message body is not [args, kwargs, embed]: {str(payload)[:200]}")
        return handle(message, body, *args, **kw)

    return checked
