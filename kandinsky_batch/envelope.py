"""Celery task messages (protocol 2) as kombu's Redis transport keeps them on a queue's list.

Celery's `send_task` publishes one message per call and round trip, and cannot take part in a
Lua script. Building the same envelope here lets a bulk submit record a chunk's jobs and push
its message in one atomic script: one round trip per chunk, and no job recorded without its
message or sent twice. tests/integration/test_envelope.py checks it against Celery's own.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any

# Celery's "embed" part of a protocol-2 body: no callbacks, no chain, no chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_COMPACT = {"ensure_ascii": False, "separators": (",", ":")}


def task_envelope(task: str, kwargs: dict[str, Any], queue: str, priority: int, kwargsrepr: str) -> str:
    """The JSON a worker of `queue` pops: a call of `task(**kwargs)` with kombu's `priority`."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[], kwargs, _EMBED], **_COMPACT).encode()  # type: ignore[arg-type]
    envelope = {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": kwargsrepr,
            "origin": f"{os.getpid()}@{_HOST}",
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope, **_COMPACT)  # type: ignore[arg-type]


_HOST = socket.gethostname()
