"""uvicorn's httptools protocol with TCP_NODELAY on every connection.

With several worker processes uvicorn binds the listening socket itself, and the connections
it accepts do not get TCP_NODELAY (the event loop sets it only on sockets it made as TCP): a
response then waits on Nagle's algorithm for the client's delayed ACK, about 40 ms per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class NoDelayHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # not a TCP socket after all: nothing to turn off
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
