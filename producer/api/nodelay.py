"""uvicorn's httptools protocol with TCP_NODELAY on every connection, and a deadline on headers.

With several worker processes uvicorn binds the listening socket itself, and the connections
it accepts do not get TCP_NODELAY (the event loop sets it only on sockets it made as TCP): a
response then waits on Nagle's algorithm for the client's delayed ACK, about 40 ms per request.

uvicorn has no limit on how long a request's line and headers may take to arrive, nor on their
size, with this protocol: a client sending a byte now and then ("slowloris") holds a connection
for as long as it likes, and enough of them hold every connection the server takes. Here a
connection whose next request has not sent all its headers within `header_timeout_s` of its
first byte (or of the connection, for the first request) is answered 408 and closed, and one
whose headers pass `max_header_bytes` is answered 431 and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 64 * 1024


def _answer(status: bytes) -> bytes:
    return b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        *args: Any,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        max_header_bytes: int = MAX_HEADER_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # not a TCP socket after all: nothing to turn off
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self._await_headers()  # an idle new connection is held no longer than slow headers

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is not None:
            self._header_bytes += len(data)
        super().data_received(data)
        if (
            self._header_deadline is not None  # still no complete headers after this data
            and self._header_bytes > self.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._stop_header_deadline()
            self.transport.write(_answer(b"431 Request Header Fields Too Large"))
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        self._await_headers()  # the next request on a keep-alive connection: a fresh deadline

    def on_headers_complete(self) -> None:
        self._stop_header_deadline()
        self._request_begun = False
        super().on_headers_complete()

    def _await_headers(self) -> None:
        if self._header_deadline is None:
            self._header_bytes = 0
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _stop_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            idle = self.cycle is None or self.cycle.response_complete  # no answer being written
            if self._request_begun and idle:  # a connection that never sent a byte: closed in silence
                self.transport.write(_answer(b"408 Request Timeout"))
            self.transport.close()
