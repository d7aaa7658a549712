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

from kandinsky_batch.keys import TENANT_HEADER

# Celery's "embed" part of a protocol-2 body: no callbacks, no chain, no chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_COMPACT = {"ensure_ascii": False, "separators": (",", ":")}


def task_envelope(
    task: str, kwargs: dict[str, Any], queue: str, priority: int, kwargsrepr: str, tenant: str | None = None
) -> str:
    """The JSON a worker of `queue` pops: a call of `task(**kwargs)` with kombu's `priority`; with
    `tenant`, marked as queued for that tenant through the fair structures (store/fair.py)."""
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
    if tenant is not None:
        envelope["headers"][TENANT_HEADER] = tenant  # type: ignore[index]
    return json.dumps(envelope, **_COMPACT)  # type: ignore[arg-type]


_HOST = socket.gethostname()


MAX_ENVELOPE_BYTES = 64 * 1024 * 1024  # far above a chunk of jobs with inline images


def envelope_problem(item: object, task: str) -> str | None:
    """Why a popped queue item is not a JSON call of `task` that a worker can run, or None.

    Checked before Celery sees the item, so any bytes on a queue are dropped with one warning
    instead of stopping the worker or making it reconnect.
    """
    if not isinstance(item, dict):
        return f"not a JSON object but {type(item).__name__}"
    body, headers, props = item.get("body"), item.get("headers"), item.get("properties")
    if not isinstance(body, str):
        return "no string 'body'"
    if len(body) > MAX_ENVELOPE_BYTES:
        return f"a body of {len(body)} bytes, over {MAX_ENVELOPE_BYTES}"
    if item.get("content-type") != "application/json":
        return f"content-type {item.get('content-type')!r}, not application/json"
    if item.get("content-encoding", "utf-8") not in ("utf-8", "utf8"):
        return f"content-encoding {item.get('content-encoding')!r}, not utf-8"
    if not isinstance(headers, dict) or headers.get("task") != task or not isinstance(headers.get("id"), str):
        return f"headers do not name task {task!r} with an id"
    if not isinstance(props, dict) or not isinstance(props.get("delivery_info"), dict):
        return "no 'properties' with a 'delivery_info' object"
    if not isinstance(props.get("delivery_tag"), str | int) or isinstance(props.get("delivery_tag"), bool):
        return "no delivery_tag"
    priority = props.get("priority", 0)
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        return f"priority {priority!r} is not an integer"
    return _body_problem(body, props.get("body_encoding"))


def _body_problem(body: str, encoding: object) -> str | None:
    if encoding not in ("base64", None):
        return f"body_encoding {encoding!r}, not base64"
    try:
        raw = base64.b64decode(body, validate=True) if encoding == "base64" else body.encode()
    except ValueError:
        return "body is not valid base64"
    try:
        call = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "body is not UTF-8"
    except (ValueError, RecursionError):
        return "body is not JSON"
    if not (
        isinstance(call, list)
        and len(call) == 3
        and isinstance(call[0], list)
        and isinstance(call[1], dict)
        and (call[2] is None or isinstance(call[2], dict))
    ):
        return "body is not [args, kwargs, embed]"
    return None


def call_kwargs(raw: bytes | str, task: str) -> dict[str, Any] | None:
    """The keyword arguments of a queue item that calls `task` (our message), or None if it is not one."""
    found = call_and_priority(raw, task)
    return None if found is None else found[0]


def call_and_priority(raw: bytes | str, task: str) -> tuple[dict[str, Any], int | None] | None:
    """`call_kwargs`, and the item's kombu priority (None when it carries none)."""
    try:
        item = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if envelope_problem(item, task) is not None:
        return None
    body = item["body"]
    decoded = base64.b64decode(body) if item["properties"].get("body_encoding") == "base64" else body.encode()
    kwargs: dict[str, Any] = json.loads(decoded)[1]
    return kwargs, item["properties"].get("priority")
