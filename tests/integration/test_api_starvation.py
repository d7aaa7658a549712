"""No request path can starve another: a real `kandinsky-batch api` (no worker, so jobs stay
queued) under one tenant holding every long request it can (trickled uploads, event streams,
`Prefer: wait`) and under slow headers, while another tenant's reads stay fast; and, in
process, /healthz failing when the worker threads are stuck and /readyz telling no secrets."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from producer.api.app import create_app
from producer.client import Client
from tests.conftest import make_settings
from tests.integration.conftest import auth, free_port, wait_for

pytestmark = pytest.mark.integration
T = TypeVar("T")

UPLOADS_PER_TENANT, UPLOADS = 4, 8
STREAMS_PER_TENANT = 10
WAITS_PER_TENANT = 10
HEADER_TIMEOUT_S = 1.5
P99_LIMIT_S = 0.25
TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


@pytest.fixture(scope="module")
def module_settings(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The API needs no models: none are built."""
    return make_settings(redis_url, Path("/nonexistent"), tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def worker() -> Iterator[None]:
    """No worker: every job stays queued, so a `Prefer: wait` waits its whole time."""
    yield None


@pytest.fixture(scope="module")
def api_settings(module_settings: Settings) -> Settings:
    return module_settings.model_copy(
        update={
            "api_port": free_port(),
            "webhooks": False,
            "api_uploads": UPLOADS,
            "api_uploads_per_tenant": UPLOADS_PER_TENANT,
            "api_streams_per_tenant": STREAMS_PER_TENANT,
            "api_waits_per_tenant": WAITS_PER_TENANT,
            "api_header_timeout_s": HEADER_TIMEOUT_S,
        }
    )


@pytest.fixture(scope="module")
def tenants(api_settings: Settings) -> dict[str, str]:
    """A hostile tenant and a bystander, neither held back by its request rate."""
    with Client(api_settings) as client:
        store = ApiKeys(client.redis, client.status_store.keys)
        return {name: store.create(name, rate_per_s=100_000.0)[1] for name in ("mallory", "bystander")}


class Loop:
    """An asyncio loop on a thread of its own: clients holding hundreds of connections at once
    while the test's own thread measures."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def start(self, coro: Coroutine[Any, Any, T]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return self.start(coro).result(timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop() -> Iterator[Loop]:
    running = Loop()
    yield running
    running.close()


# -- raw HTTP/1.1 over asyncio streams: requests that are left open or sent a byte at a time -----


@dataclass
class Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    answer: asyncio.Task[tuple[int, dict[str, str]]] = field(init=False)

    def status(self) -> int | None:
        """The answer's status; None while there is none (the request is being served)."""
        return self.answer.result()[0] if self.answer.done() else None


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and headers of an answer; 0 for a connection closed without one."""
    line = await reader.readline()
    if not line:
        return 0, {}
    headers = {}
    while (header := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(line.split()[1]), headers


async def send(port: int, data: bytes) -> Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    conn = Conn(reader, writer)
    conn.answer = asyncio.create_task(read_head(reader))
    return conn


def head(method: str, path: str, key: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", f"Authorization: Bearer {key}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def settle(conns: list[Conn], held: int, timeout: float = 15) -> None:
    """Until every answer but `held` has come, and a little longer (so a late one is seen)."""
    deadline = time.monotonic() + timeout
    while sum(c.answer.done() for c in conns) < len(conns) - held and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)


async def close_all(conns: list[Conn]) -> None:
    for conn in conns:
        conn.answer.cancel()
        conn.writer.close()
    await asyncio.gather(*(c.writer.wait_closed() for c in conns), return_exceptions=True)


@dataclass
class Attack:
    uploads: list[Conn]
    streams: list[Conn]
    waits: list[Conn]

    def all(self) -> list[Conn]:
        return [*self.uploads, *self.streams, *self.waits]


async def streams(port: int, key: str, batch_id: str, count: int) -> list[Conn]:
    """`count` event streams of a batch, once each has its answer."""
    opened = await asyncio.gather(
        *(send(port, head("GET", f"/v1/batches/{batch_id}/events", key)) for _ in range(count))
    )
    await settle(opened, 0)
    return opened


async def attack(port: int, key: str, batch_id: str) -> Attack:
    """100 uploads that send headers and half a line, 100 event streams, 50 `Prefer: wait=60`."""
    upload = head(
        "POST", "/v1/batches", key, "Content-Type: application/x-ndjson", "Transfer-Encoding: chunked"
    ) + chunk(b'{"prompt": "a trickle')
    body = json.dumps({"prompt": "never run", **TINY}).encode()
    wait = head(
        "POST", "/v1/jobs", key, "Prefer: wait=60", "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ) + body  # fmt: skip
    uploads = await asyncio.gather(*(send(port, upload) for _ in range(100)))
    events = await streams(port, key, batch_id, 100)
    waits = await asyncio.gather(*(send(port, wait) for _ in range(50)))
    await settle(uploads, UPLOADS_PER_TENANT)
    await settle(waits, WAITS_PER_TENANT)
    return Attack(uploads, events, waits)


async def trickle(conns: list[Conn], stop: asyncio.Event) -> None:
    """A byte of the unfinished line every half second, to every upload still being read."""
    while not stop.is_set():
        for conn in conns:
            if conn.status() is None and not conn.writer.is_closing():
                conn.writer.write(chunk(b"x"))
        await asyncio.sleep(0.5)


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


def test_one_tenant_holding_every_long_request_starves_no_other(
    server: str, api_settings: Settings, tenants: dict[str, str], loop: Loop
):
    mallory, bystander = tenants["mallory"], tenants["bystander"]
    with httpx.Client(base_url=server, timeout=30) as http:
        line = json.dumps({"prompt": "queued", **TINY}).encode() + b"\n"
        theirs = http.post("/v1/batches", content=line, headers=auth(mallory)).json()["batch_id"]
        job = http.post("/v1/jobs", json={"prompt": "mine", **TINY}, headers=auth(bystander)).json()
        mine = http.post("/v1/batches", content=line, headers=auth(bystander)).json()["batch_id"]

        held = loop.run(attack(api_settings.api_port, mallory, theirs))
        stop = asyncio.Event()
        trickling = loop.start(trickle(held.uploads, stop))
        try:
            # Past the tenant's share: 429 with Retry-After, as a problem document, at once.
            uploads = [c.status() for c in held.uploads]
            assert (
                uploads.count(None) == UPLOADS_PER_TENANT and uploads.count(429) == 100 - UPLOADS_PER_TENANT
            )
            streamed = [c.status() for c in held.streams]
            assert (
                streamed.count(200) == STREAMS_PER_TENANT and streamed.count(429) == 100 - STREAMS_PER_TENANT
            )
            refused = next(c.answer.result()[1] for c in held.streams if c.status() == 429)
            assert refused["content-type"] == "application/problem+json" and int(refused["retry-after"]) > 0
            refused = next(c.answer.result()[1] for c in held.uploads if c.status() == 429)
            assert refused["connection"] == "close"  # its body is left unread: the connection goes too
            # Past its share of waits a job is answered at once, not waited for (it is queued).
            waits = [c.status() for c in held.waits]
            assert waits.count(None) == WAITS_PER_TENANT and waits.count(202) == 50 - WAITS_PER_TENANT

            # Meanwhile another tenant's reads stay fast, and its own uploads and streams go.
            took: list[float] = []
            for _ in range(100):
                for path in (f"/v1/jobs/{job['job_id']}", f"/v1/batches/{mine}", "/readyz"):
                    started = time.perf_counter()
                    answer = http.get(path, headers=auth(bystander))
                    took.append(time.perf_counter() - started)
                    assert answer.status_code == 200, (path, answer.text)
            upload = http.post("/v1/batches", content=line * 3, headers=auth(bystander))
            assert upload.status_code == 202 and upload.json()["jobs"] == 3, upload.text
            with http.stream("GET", f"/v1/batches/{mine}/events", headers=auth(bystander)) as events:
                assert events.status_code == 200 and next(events.iter_lines()) == "event: batch"
            assert http.get("/healthz").status_code == 200
            assert all(c.status() is None for c in held.uploads if c.status() != 429)  # still held
        finally:
            loop.loop.call_soon_threadsafe(stop.set)
            trickling.result(10)
            loop.run(close_all(held.all()))
        print(f"bystander: {len(took)} reads, p50 {statistics.median(took) * 1000:.1f} ms, "
              f"p99 {p99(took) * 1000:.1f} ms, max {max(took) * 1000:.1f} ms")  # fmt: skip
        assert p99(took) < P99_LIMIT_S, f"p99 {p99(took) * 1000:.0f} ms"

        # Once the hostile tenant has gone, its slots come back: everything works again.
        def uploads_again() -> bool:
            return http.post("/v1/batches", content=line, headers=auth(mallory)).status_code == 202

        wait_for(uploads_again, 15, "an upload once the hostile clients left")

        def streams_again() -> bool:  # every stream slot came back, and no more
            again = loop.run(streams(api_settings.api_port, mallory, theirs, STREAMS_PER_TENANT + 1))
            loop.run(close_all(again))
            return sorted(c.status() or 0 for c in again) == [200] * STREAMS_PER_TENANT + [429]

        wait_for(streams_again, 15, "every event stream once the hostile clients left")

        def waits_again() -> bool:  # a slot again: it waits its second out, then answers 202
            started = time.monotonic()
            spec, prefer = {"prompt": "waited", **TINY}, {**auth(mallory), "Prefer": "wait=1"}
            answer = http.post("/v1/jobs", json=spec, headers=prefer)
            return answer.status_code == 202 and time.monotonic() - started >= 0.9

        wait_for(waits_again, 15, "a wait once the hostile clients left")
        assert http.get("/healthz").json() == {"status": "ok"}


async def drip(port: int, first: bytes, limit_s: float) -> tuple[float, bytes]:
    """Send `first`, then (unless it is empty) a byte every 0.3 s; (seconds until the server
    closed, what it sent)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    got = b""
    try:
        while time.monotonic() - started < limit_s:
            try:
                data = await asyncio.wait_for(reader.read(4096), 0.3)
            except TimeoutError:
                writer.write(b"a" if first else b"")
                continue
            if not data:
                return time.monotonic() - started, got
            got += data
    except ConnectionError:
        return time.monotonic() - started, got
    finally:
        writer.close()
    return float("inf"), got


async def slowloris(port: int) -> list[tuple[float, bytes]]:
    in_line, in_headers = b"GET /healthz?q=", b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: "
    kept_alive = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n" + in_headers  # a fine request, then slow
    firsts = [in_line] * 25 + [in_headers] * 25 + [b""] * 3 + [kept_alive]
    return await asyncio.gather(*(drip(port, first, HEADER_TIMEOUT_S + 10) for first in firsts))


def test_slow_headers_are_cut_off_within_the_header_timeout(
    server: str, api_settings: Settings, tenants: dict[str, str], loop: Loop
):
    dripping = loop.start(slowloris(api_settings.api_port))
    with httpx.Client(base_url=server, timeout=10) as http:
        while not dripping.done():  # ordinary requests are served all the while
            assert http.get("/healthz").status_code == 200
            assert http.get("/v1/usage", headers=auth(tenants["bystander"])).status_code == 200
            time.sleep(0.1)
        closed = dripping.result()
        assert all(took < HEADER_TIMEOUT_S + 1.0 for took, _ in closed), sorted(t for t, _ in closed)[-5:]
        slow, silent, kept_alive = closed[:50], closed[50:53], closed[53]
        assert all(got.startswith(b"HTTP/1.1 408") for _, got in slow)
        assert all(got == b"" for _, got in silent)  # never sent a byte: closed without a word
        assert kept_alive[1].startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in kept_alive[1]
        # Headers still incomplete past their cap: 431, without waiting for the rest.
        big = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * api_settings.api_max_header_bytes
        took, answer = loop.run(drip(api_settings.api_port, big, HEADER_TIMEOUT_S + 10))
        assert answer.startswith(b"HTTP/1.1 431") and took < HEADER_TIMEOUT_S, (took, answer[:40])
        assert http.get("/healthz").status_code == 200


# -- in process: a real uvicorn on a thread, for a pool stuck on purpose and logs to read ------


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, "uvicorn")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def in_process(redis_url: str, root: Path, **overrides: Any) -> Settings:
    return make_settings(redis_url, Path("/nonexistent"), root, webhooks=False, **overrides)


async def fire(url: str, count: int) -> list[int]:
    limits = httpx.Limits(max_connections=count + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        answers = await asyncio.gather(*(client.get(url) for _ in range(count)))
    return [a.status_code for a in answers]


def test_healthz_is_503_while_every_worker_thread_is_stuck_and_200_while_they_only_queue(
    redis_url: str, tmp_path: Path, loop: Loop
):
    app = create_app(in_process(redis_url, tmp_path, api_health_timeout_s=0.5))
    entered = 0
    lock = threading.Lock()
    release = threading.Event()

    def stuck() -> dict[str, str]:  # a sync route, so served from the worker threads
        nonlocal entered
        with lock:
            entered += 1
        release.wait(30)
        return {}

    def slow() -> dict[str, str]:
        nonlocal entered
        with lock:
            entered += 1
        time.sleep(0.25)
        return {}

    app.add_api_route("/stuck", stuck)
    app.add_api_route("/slow", slow)
    with serving(app) as url:
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        held = loop.start(fire(f"{url}/stuck", 45))
        try:
            wait_for(lambda: entered >= 40, 30, "every worker thread held")  # anyio's 40
            sick = httpx.get(f"{url}/healthz", timeout=10)
            assert sick.status_code == 503 and sick.headers["content-type"] == "application/problem+json"
        finally:
            release.set()
        assert held.result(30) == [200] * 45
        assert httpx.get(f"{url}/healthz").status_code == 200

        # Busy is not stuck: 240 requests of 0.25 s queue for 1.5 s, threads come and go.
        entered = 0
        busy = loop.start(fire(f"{url}/slow", 240))
        wait_for(lambda: entered >= 40, 30, "every worker thread busy")
        started = time.monotonic()
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        assert time.monotonic() - started >= 0.45  # no thread came free in time: the queue was long
        assert busy.result(60) == [200] * 240


def test_readyz_names_what_is_down_and_logs_why_telling_the_caller_nothing_more(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    no_redis = in_process(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    blocked = tmp_path / "a-file"
    blocked.write_text("storage cannot be a folder under a file")
    no_storage = in_process(redis_url, tmp_path, storage_url=(blocked / "store").as_uri())
    for settings, detail, secret in [
        (no_redis, "Redis is unreachable", "refused"),
        (no_storage, "storage is unreachable", "a-file"),
    ]:
        caplog.clear()
        with serving(create_app(settings)) as url:
            answer = httpx.get(f"{url}/readyz", timeout=30)
            assert httpx.get(f"{url}/healthz").status_code == 200  # alive, only not ready
        assert answer.status_code == 503 and answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["detail"] == detail and secret not in answer.text.lower()
        assert any(secret in r.getMessage().lower() and r.levelname == "WARNING" for r in caplog.records)
