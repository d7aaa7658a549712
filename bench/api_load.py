"""HTTP API load: single submits and reads at 1/16/64 clients, and a streamed JSONL upload vs the SDK.

A real `kandinsky-batch api` process (uvicorn, `--api-workers` processes, default from the settings)
is started on a free loopback port with an API key whose rate limit and cap never throttle the run.
No worker runs: jobs stay queued. The clients are wrk (Debian's `wrk`, bench/wrk.py) when it is on
PATH: one thread, one keep-alive connection per client, `--phase-seconds` per phase; Python clients
cost ~1 ms of CPU per request on the same 2 cores as the server, wrk a few microseconds. With
`--client httpx` (or without wrk) they are threads of this process, each with its own `httpx.Client`.
Both print their own CPU per request, so a client-bound figure shows as such. `/healthz` at 16
clients is the baseline of the HTTP stack alone.

The upload streams `--lines` JSONL lines from a generator (never the whole body in memory), and is
compared with `Client.submit_batch` of the same lines from a file, in the same run; the server's RSS
(every process of it, from /proc) is sampled during the upload.

Run: python bench/api_load.py [--requests 3000] [--phase-seconds 10] [--concurrency 1,16,64]
     [--api-workers N] [--lines 100000] [--parts jobs,upload] [--client wrk|httpx] [--max-wall 1200]
Targets: POST /v1/jobs >= 1000/s with p99 <= 50 ms at 16 clients; a 100k-line upload >= 50 % of the
SDK's submit_batch rate; RSS growth < 200 MB for a 1M-line upload.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import _common
import httpx
import procstat
import redis
import wrk
from _common import note, result
from api_upload import upload_part

from kandinsky_batch.keys import Keys
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from producer.client import Client
from producer.launch import worker_env

TARGET_RPS, TARGET_P99_MS = 1000.0, 50.0
TAG_PREFIX = "kbbapi"  # + 6 hex: stale runs are found by it
ALIVE_TTL_S = 60
BODY = {"height": 64, "width": 64}


# -- the server process and its resources, from /proc -------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One `kandinsky-batch api` process (or the profiling harness) on loopback, logging to a file."""

    def __init__(self, settings: Settings, log: Path, command: list[str] | None = None) -> None:
        script = Path(sys.executable).with_name("kandinsky-batch")
        default = [str(script), "api"] if script.exists() else [sys.executable, "-m", "producer.cli", "api"]
        self.url = f"http://{settings.api_host}:{settings.api_port}"
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                command or default, env=worker_env(settings), stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the API server did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- load: N threads, one httpx.Client each ------------------------------------------------------


@dataclass
class Phase:
    name: str
    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: int = 0  # transport errors
    loop_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    job_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.statuses.items() if 200 <= code < 300)

    def quantile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1e3 * ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.5) - 1))]

    def report(self, metric: str) -> None:
        done = len(self.latencies)
        if not done:
            result(f"{metric}_errors", self.failures, "requests")
            return
        rate = self.ok / self.seconds
        result(f"{metric}_req_per_s", rate, "req/s")
        result(f"{metric}_p50_ms", self.quantile_ms(0.50), "ms")
        result(f"{metric}_p99_ms", self.quantile_ms(0.99), "ms")
        result(f"{metric}_server_cpu_ms_per_req", 1e3 * (self.loop_cpu_s + self.other_cpu_s) / done, "ms")
        result(f"{metric}_server_loop_cpu_ms_per_req", 1e3 * self.loop_cpu_s / done, "ms")
        result(f"{metric}_client_cpu_ms_per_req", 1e3 * self.client_cpu_s / done, "ms")
        bad = {code: n for code, n in self.statuses.items() if not 200 <= code < 300}
        result(f"{metric}_errors", sum(bad.values()) + self.failures, "requests")
        note(f"  {metric}: {done} requests in {self.seconds:.2f} s, statuses {dict(self.statuses)}")


Send = Callable[[httpx.Client, int], httpx.Response]


def run_phase(
    server: Server, headers: dict[str, str], phase: Phase, send: Send, requests: int, seconds: float
) -> Phase:
    """`phase.concurrency` clients send until `requests` are done or `seconds` pass, whichever first."""
    counter = itertools.count()
    start = threading.Barrier(phase.concurrency + 1)
    deadline = [0.0]
    lock = threading.Lock()

    def client() -> None:
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        ids: list[str] = []
        failures = 0
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
            http.get("/healthz")  # the connection is open before the clock starts
            start.wait()
            while (n := next(counter)) < requests and time.perf_counter() < deadline[0]:
                began = time.perf_counter()
                try:
                    answer = send(http, n)
                except httpx.TransportError:
                    failures += 1
                    continue
                latencies.append(time.perf_counter() - began)
                statuses[answer.status_code] += 1
                if answer.status_code == 202:
                    ids.append(answer.json()["job_id"])
        with lock:
            phase.latencies += latencies
            phase.statuses.update(statuses)
            phase.job_ids += ids
            phase.failures += failures

    threads = [threading.Thread(target=client, daemon=True) for _ in range(phase.concurrency)]
    for thread in threads:
        thread.start()
    loop0, other0 = procstat.cpu_split(server.pid)
    client0 = time.process_time()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - began
    loop1, other1 = procstat.cpu_split(server.pid)
    phase.loop_cpu_s, phase.other_cpu_s = loop1 - loop0, other1 - other0
    phase.client_cpu_s = time.process_time() - client0
    return phase


def post_job(texts: list[str]) -> Send:
    def send(http: httpx.Client, n: int) -> httpx.Response:
        return http.post("/v1/jobs", json={"prompt": texts[n % len(texts)], **BODY})

    return send


def get_job(ids: list[str]) -> Send:
    def send(http: httpx.Client, n: int) -> httpx.Response:
        return http.get(f"/v1/jobs/{ids[n % len(ids)]}")

    return send


def get_healthz(http: httpx.Client, n: int) -> httpx.Response:
    return http.get("/healthz")


def jobs_part(server: Server, headers: dict[str, str], args: argparse.Namespace) -> None:
    """/healthz, then POST and GET at each concurrency (GETs read the jobs the POSTs made)."""
    texts = _common.prompts(1000, seed=3)
    note("healthz (the HTTP stack alone):")
    base = run_phase(server, headers, Phase("healthz", 16), get_healthz, args.requests, args.phase_seconds)
    base.report("api_healthz_c16")
    ids: list[str] = []
    posts: dict[int, Phase] = {}
    note("POST /v1/jobs:")
    for c in args.concurrency:
        phase = run_phase(
            server, headers, Phase("post", c), post_job(texts), args.requests, args.phase_seconds
        )
        phase.report(f"api_post_jobs_c{c}")
        ids += phase.job_ids
        posts[c] = phase
    if not ids:
        raise RuntimeError("no job was accepted: nothing to read back")
    note("GET /v1/jobs/{id}:")
    gets: dict[int, Phase] = {}
    for c in args.concurrency:
        phase = run_phase(server, headers, Phase("get", c), get_job(ids), args.requests, args.phase_seconds)
        phase.report(f"api_get_job_c{c}")
        gets[c] = phase
    base_rate = base.ok / base.seconds
    for name, phases in (("post_jobs", posts), ("get_job", gets)):
        if 16 in phases:
            result(f"api_{name}_c16_vs_healthz", phases[16].ok / phases[16].seconds / base_rate, "x")
    if 16 in posts:
        rate, p99 = posts[16].ok / posts[16].seconds, posts[16].quantile_ms(0.99)
        verdict = "met" if rate >= TARGET_RPS and p99 <= TARGET_P99_MS else "MISSED"
        note(
            f"target POST /v1/jobs >= {TARGET_RPS:g}/s with p99 <= {TARGET_P99_MS:g} ms at 16 clients: "
            f"{verdict} ({rate:.0f}/s, p99 {p99:.1f} ms)"
        )


def wrk_jobs_part(server: Server, headers: dict[str, str], args: argparse.Namespace) -> None:
    """As `jobs_part`, with wrk as the clients: one connection per client, `--phase-seconds` each."""
    body = json.dumps({"prompt": "a lighthouse, take {n}", **BODY})
    post = wrk.lua_script("POST", ["/v1/jobs"], {**headers, "Content-Type": "application/json"}, body)
    note("healthz (the HTTP stack alone):")
    base = wrk_phase(server, wrk.lua_script("GET", ["/healthz"], {}, None), 16, args, "api_healthz_c16")
    posts = {c: wrk_phase(server, post, c, args, f"api_post_jobs_c{c}") for c in args.concurrency}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:  # ids for the GETs
        ids = [
            http.post("/v1/jobs", json={"prompt": f"read back {n}", **BODY}).json()["job_id"]
            for n in range(200)
        ]
    get = wrk.lua_script("GET", [f"/v1/jobs/{job_id}" for job_id in ids], headers, None)
    gets = {c: wrk_phase(server, get, c, args, f"api_get_job_c{c}") for c in args.concurrency}
    base_rate = base.ok / base.seconds
    for name, phases in (("post_jobs", posts), ("get_job", gets)):
        if 16 in phases:
            result(f"api_{name}_c16_vs_healthz", phases[16].ok / phases[16].seconds / base_rate, "x")
    if 16 in posts:
        rate, p99 = posts[16].ok / posts[16].seconds, posts[16].p99_ms
        verdict = "met" if rate >= TARGET_RPS and p99 <= TARGET_P99_MS else "MISSED"
        note(
            f"target POST /v1/jobs >= {TARGET_RPS:g}/s with p99 <= {TARGET_P99_MS:g} ms at 16 clients: "
            f"{verdict} ({rate:.0f}/s, p99 {p99:.1f} ms)"
        )


def wrk_phase(
    server: Server, script: str, connections: int, args: argparse.Namespace, metric: str
) -> wrk.WrkRun:
    loop0, other0 = procstat.cpu_split(server.pid)
    done = wrk.run(server.url, script, connections, args.phase_seconds)
    loop1, other1 = procstat.cpu_split(server.pid)
    server_cpu = (loop1 - loop0) + (other1 - other0)
    result(f"{metric}_req_per_s", done.ok / done.seconds, "req/s")
    result(f"{metric}_p50_ms", done.p50_ms, "ms")
    result(f"{metric}_p99_ms", done.p99_ms, "ms")
    result(f"{metric}_server_cpu_ms_per_req", 1e3 * server_cpu / max(1, done.requests), "ms")
    result(f"{metric}_client_cpu_ms_per_req", 1e3 * done.cpu_s / max(1, done.requests), "ms")
    result(f"{metric}_errors", done.non_2xx + done.socket_errors, "requests")
    note(f"  {metric}: {done.requests} requests in {done.seconds:.2f} s")
    return done


# -- the run ---------------------------------------------------------------------------------------


def stale_cleanup(client: redis.Redis) -> None:
    """Delete the keys of runs of this benchmark that were killed (their alive key has expired)."""
    tags = {m.group(0) for key in client.scan_iter(match=f"*{TAG_PREFIX}*", count=5000)
            if (m := re.search(rf"{TAG_PREFIX}[0-9a-f]{{6}}", key.decode(errors="replace")))}  # fmt: skip
    for tag in sorted(tags):
        if not client.exists(f"{tag}:bench-alive"):
            note(f"removed {_common.cleanup(client, tag)} keys left by a killed run ({tag})")


def heartbeat(client: redis.Redis, tag: str, stop: threading.Event) -> None:
    while True:
        client.set(f"{tag}:bench-alive", "1", ex=ALIVE_TTL_S)
        if stop.wait(ALIVE_TTL_S / 3):
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="most requests per phase")
    parser.add_argument("--phase-seconds", type=float, default=10.0, help="most seconds per phase")
    parser.add_argument("--concurrency", default="1,16,64", help="client counts, comma-separated")
    parser.add_argument("--api-workers", type=int, default=None, help="uvicorn processes (default: settings)")
    parser.add_argument("--lines", type=int, default=100_000, help="lines of the JSONL upload")
    parser.add_argument("--upload-timeout", type=float, default=900.0, help="seconds one upload may take")
    parser.add_argument("--parts", default="jobs,upload", help="jobs, upload (comma-separated)")
    parser.add_argument(
        "--client", choices=["wrk", "httpx"], default=None, help="load generator (default: wrk if on PATH)"
    )
    parser.add_argument("--max-wall", type=float, default=1200.0, help="seconds before the run stops")
    args = parser.parse_args(argv)
    args.client = args.client or ("wrk" if wrk.available() else "httpx")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    parts = set(args.parts.split(","))

    _common.stop_on_sigterm()

    def out_of_time(signum: int, _frame: object) -> None:
        raise SystemExit(f"stopped after --max-wall {args.max_wall:g} s")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, args.max_wall)

    redis_client = _common.connect()
    stale_cleanup(redis_client)
    tag = TAG_PREFIX + uuid.uuid4().hex[:6]
    stop_beat = threading.Event()
    threading.Thread(target=heartbeat, args=(redis_client, tag, stop_beat), daemon=True).start()
    _common.machine_note()
    base = _common.bench_settings(tag)
    workers = args.api_workers or base.api_workers
    server: Server | None = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = _common.bench_settings(
                tag,
                api_host="127.0.0.1",
                api_port=free_port(),
                api_workers=workers,
                queue_high_water=10**9,  # no worker drains the queue: never wait for room
                storage_url=f"file://{tmp}/storage",
            )
            with Client(settings) as sdk:
                keys = ApiKeys(sdk.redis, Keys(tag))
                _, secret = keys.create("bench", rate_per_s=1e9, max_queued=10**9)
            keep = {keys.key.encode(), f"{tag}:bench-alive".encode()}
            headers = {"Authorization": f"Bearer {secret}"}
            log = Path(tmp) / "api.log"
            server = Server(settings, log)
            note(f"redis {_common.REDIS_URL}, prefix {tag}, server {server.url} (pid {server.pid})")
            result("api_workers", workers, "processes")
            if args.client == "wrk":
                note(
                    f"clients: wrk, one thread, N keep-alive connections, {args.phase_seconds:g} s per phase"
                )
            else:
                note(f"clients: threads with one httpx.Client each; up to {args.requests} requests or "
                     f"{args.phase_seconds:g} s per phase")  # fmt: skip
            if "jobs" in parts:
                (wrk_jobs_part if args.client == "wrk" else jobs_part)(server, headers, args)
            if "upload" in parts:
                upload_part(server, headers, settings, redis_client, keep, args)
            server.stop()
            server = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if server is not None:
            server.stop()
        stop_beat.set()
        _common.machine_note()
        _common.finish(redis_client, tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
