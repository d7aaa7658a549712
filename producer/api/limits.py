"""A cap on request bodies, so no request but a batch upload can make the server hold much.

A body over `api_max_body_bytes` gets 413, whether its Content-Length says so up front or
it is sent in chunks: reading stops at the limit. Batch uploads are streamed and have their
own, larger cap (producer/api/routes/batches.py).
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.api.problems import problem

UPLOAD_PATHS = frozenset({"/v1/batches"})


class BodyTooLarge(HTTPException):
    """Raised from the body reader mid-body; FastAPI passes it on, and it is answered as 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, "Body too large")


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            detail = f"a request body is at most {self.limit} bytes"
            await problem(413, "Body too large", detail)(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)
