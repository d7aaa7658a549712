"""A source batch: the JSONL object that a `{"source": URI}` body names in the API's storage.

A tenant's key may read only under `sources/<tenant>/` of that storage; an admin key anywhere in
it. The object is read when its pieces are iterated, in an upload thread (producer/api/uploads.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from fastapi import Request

from kandinsky_batch.errors import NotFound
from kandinsky_batch.storage import Storage
from kandinsky_batch.store.apikeys import ApiKey
from producer.api.problems import Problem
from producer.client import Client

SOURCE_BODY_BYTES = 64 * 1024


async def small_body(request: Request) -> bytes:
    """A source request's body: 413 past `SOURCE_BODY_BYTES`."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > SOURCE_BODY_BYTES:
            raise Problem(413, "Body too large", f"a source request is at most {SOURCE_BODY_BYTES} bytes")
    return body


def source_chunks(client: Client, key: ApiKey, body: bytes) -> Iterator[bytes]:
    """The pieces of the JSONL object a `{"source": URI}` body names, if the key may read it."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Problem(422, "Invalid request", "body: not JSON", fields=["body"]) from None
    if not isinstance(request, dict) or set(request) != {"source"} or not isinstance(request["source"], str):
        detail = 'body: a JSON body is {"source": "<URI>"} and nothing else'
        raise Problem(422, "Invalid request", detail, fields=["source"])
    uri = request["source"]
    object_key = client.storage.key_for(uri)
    allowed = key.admin or (object_key or "").startswith(f"sources/{key.tenant}/")
    if object_key is None or not allowed:
        where = "" if key.admin else f" under sources/{key.tenant}/"
        detail = f"source: {uri!r} is not in this API's storage{where}"
        raise Problem(422, "Invalid request", detail, fields=["source"])
    return _reading(client.storage, object_key, uri)


def _reading(storage: Storage, object_key: str, uri: str) -> Iterator[bytes]:
    """The object's pieces, read when iterated (in the upload thread, never on the event loop);
    NotFound from the first if there is no such object."""
    chunks = storage.chunks(object_key)
    try:
        first = next(chunks, b"")
    except KeyError:
        raise NotFound(f"source {uri!r} not found") from None
    yield first
    yield from chunks
