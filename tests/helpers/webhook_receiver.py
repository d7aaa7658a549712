"""A real https webhook receiver for tests: records every request and answers by its path.

- `/ok`: 200.
- `/flaky`: 500 to the first two tries of each `webhook-id`, then 200.
- `/down`: always 500.
- `/slow`: waits `slow_s` before answering 200.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class Receiver:
    def __init__(self, port: int, slow_s: float) -> None:
        self.port = port
        self.slow_s = slow_s
        self.received: list[Received] = []
        self.tries: Counter[str] = Counter()
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def of_type(self, kind: str, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.event["type"] == kind and (path is None or r.path == path)]

    def answer(self, path: str, delivery_id: str) -> int:
        with self.lock:
            self.tries[delivery_id] += 1
            tries = self.tries[delivery_id]
        if path == "/slow":
            time.sleep(self.slow_s)
        if path == "/down" or (path == "/flaky" and tries <= 2):
            return 500
        return 200


@contextmanager
def running_receiver(certs: Path, slow_s: float = 20.0) -> Iterator[Receiver]:
    """A threaded https server on 127.0.0.1 with `certs`/server.crt; stopped on exit."""
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = receiver.answer(self.path, self.headers.get("webhook-id", ""))
            with receiver.lock:
                receiver.received.append(
                    Received(self.path, dict(self.headers.items()), body, time.time(), status)
                )
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    receiver = Receiver(server.server_address[1], slow_s)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
