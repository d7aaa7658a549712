"""Batch ids: where a batch's id comes from decides what submitting it again does.

A fresh id (`new_batch_id`) makes a new batch every time. A derived id makes a repeat find the
batch it made before, so the store's submit script sends only the jobs never sent: a file's id
comes from its bytes and options (`batch_id_for_file`, prefix `f`), an SDK or CLI
idempotency key's from the key (`batch_id_for_key`, prefix `k`). The HTTP API derives its
callers' keyed batches under a secret instead (prefix `h`, producer/api/keyed_ids.py), so no
tenant can work out another's. Every id follows `kandinsky_batch.keys.BATCH_ID`: it names a
storage folder.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any


def new_batch_id() -> str:
    return uuid.uuid4().hex[:16]


def batch_id_for_key(key: str) -> str:
    """The batch of a keyed submit of the SDK or CLI: the same key gives the same batch.

    A plain hash: whoever can reach Redis can read every batch anyway, and these keys have no
    tenant, so they never meet an HTTP caller's (whose ids are HMACs of tenant and key).
    """
    return "k" + hashlib.sha256(key.encode()).hexdigest()[:19]


def batch_id_for_file(
    path: Path, defaults: dict[str, Any], prompt_column: str = "prompt", seeds_per_prompt: int = 1
) -> str:
    """The same file with the same defaults and options is the same batch, so resubmitting it runs nothing twice.

    Options left at their defaults are not digested, so a file's batch id is the one it always had.
    """
    options: dict[str, Any] = {}
    if prompt_column != "prompt":
        options["prompt_column"] = prompt_column
    if seeds_per_prompt != 1:
        options["seeds_per_prompt"] = seeds_per_prompt
    header = {"defaults": defaults, "options": options} if options else defaults
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return "f" + digest.hexdigest()[:19]
