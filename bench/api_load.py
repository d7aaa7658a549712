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
import os
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _common
import httpx
import redis
import wrk
from _common import note, result

from kandinsky_batch.keys import Keys
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from producer.client import Client
from producer.launch import worker_env

TARGET_RPS, TARGET_P99_MS, TARGET_UPLOAD_RATIO, TARGET_RSS_MB = 1000.0, 50.0, 0.5, 200.0
TAG_PREFIX = "kbbapi"  # + 6 hex: stale runs are found by it
ALIVE_TTL_S = 60
BODY = {"height": 64, "width": 64}
LINES_PER_CHUNK = 512  # JSONL lines per chunk of the streamed upload (~40 KB)
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the server process and its resources, from /proc -------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree(pid: int) -> list[int]:
    """`pid` and every process below it (uvicorn's workers), by scanning /proc for parents."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds of the server's processes: (event-loop threads, the rest: thread pool, exited threads)."""
    loop = total = 0.0
    for proc in tree(pid):
        try:
            total += _cpu_seconds(Path(f"/proc/{proc}/stat"))
            loop += _cpu_seconds(Path(f"/proc/{proc}/task/{proc}/stat"))
        except OSError:
            continue
    return loop, total - loop


def _cpu_seconds(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int, field_name: str) -> int:
    """The sum of one /proc/<pid>/status field (VmRSS, VmHWM) over the server's processes."""
    total = 0
    for proc in tree(pid):
        try:
            for line in Path(f"/proc/{proc}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def reset_peak(pid: int) -> bool:
    """Reset VmHWM of the server's processes (`5` to clear_refs), so it then holds the upload's peak."""
    try:
        for proc in tree(pid):
            Path(f"/proc/{proc}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


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
    loop0, other0 = cpu_split(server.pid)
    client0 = time.process_time()
    deadline[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    phase.seconds = time.perf_counter() - began
    loop1, other1 = cpu_split(server.pid)
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
    loop0, other0 = cpu_split(server.pid)
    done = wrk.run(server.url, script, connections, args.phase_seconds)
    loop1, other1 = cpu_split(server.pid)
    server_cpu = (loop1 - loop0) + (other1 - other0)
    result(f"{metric}_req_per_s", done.ok / done.seconds, "req/s")
    result(f"{metric}_p50_ms", done.p50_ms, "ms")
    result(f"{metric}_p99_ms", done.p99_ms, "ms")
    result(f"{metric}_server_cpu_ms_per_req", 1e3 * server_cpu / max(1, done.requests), "ms")
    result(f"{metric}_client_cpu_ms_per_req", 1e3 * done.cpu_s / max(1, done.requests), "ms")
    result(f"{metric}_errors", done.non_2xx + done.socket_errors, "requests")
    note(f"  {metric}: {done.requests} requests in {done.seconds:.2f} s")
    return done


# -- the upload vs the SDK -----------------------------------------------------------------------


def jsonl_chunks(lines: int, seed: int) -> Iterator[bytes]:
    """The upload's body, LINES_PER_CHUNK lines at a time, made as it is sent."""
    texts = _common.iter_prompts(seed)
    for start in range(0, lines, LINES_PER_CHUNK):
        count = min(LINES_PER_CHUNK, lines - start)
        yield b"".join(
            json.dumps({"prompt": text}).encode() + b"\n" for text in itertools.islice(texts, count)
        )


class RssSampler(threading.Thread):
    """The server's summed VmRSS every 50 ms, while an upload runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = memory_kb(pid, "VmRSS")
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            self.peak_kb = max(self.peak_kb, memory_kb(self.pid, "VmRSS"))


def upload(server: Server, headers: dict[str, str], lines: int, seed: int, timeout: float) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, headers=headers, timeout=timeout) as http:
        answer = http.post(
            "/v1/batches",
            content=jsonl_chunks(lines, seed),
            headers={"Content-Type": "application/x-ndjson"},
        )
    if answer.status_code != 202:
        raise RuntimeError(f"upload answered {answer.status_code}: {answer.text[:500]}")
    body: dict[str, Any] = answer.json()
    if body["sent"] != lines or body["errors"]:
        raise RuntimeError(f"upload sent {body['sent']} of {lines}, errors {body['errors'][:5]}")
    return body


def clear_jobs(client: redis.Redis, tag: str, keep: set[bytes]) -> None:
    """Delete the run's jobs, batches and queues between the upload and the SDK pass (keeps the key)."""
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"*{tag}*", count=5000):
        if key not in keep:
            batch.append(key)
        if len(batch) >= 5000:
            client.unlink(*batch)
            batch = []
    if batch:
        client.unlink(*batch)


def upload_part(
    server: Server,
    headers: dict[str, str],
    settings: Settings,
    redis_client: redis.Redis,
    keep: set[bytes],
    args: argparse.Namespace,
) -> None:
    lines = args.lines
    note(f"upload of {lines} lines vs Client.submit_batch of the same lines:")
    with tempfile.TemporaryDirectory() as tmp, Client(settings) as sdk:
        path, warm = Path(tmp) / "lines.jsonl", Path(tmp) / "warm.jsonl"
        for target, count, seed in ((path, lines, 5), (warm, 1000, 6)):
            with target.open("wb") as fh:
                for chunk in jsonl_chunks(count, seed):
                    fh.write(chunk)
        upload(server, headers, 1000, seed=6, timeout=args.upload_timeout)  # warm-up: threads, scripts
        sdk.submit_batch(warm, batch_id="warm-sdk")

        rss_before = memory_kb(server.pid, "VmRSS")
        peak_reset = reset_peak(server.pid)
        sampler = RssSampler(server.pid)
        sampler.start()
        loop0, other0 = cpu_split(server.pid)
        began = time.perf_counter()
        body = upload(server, headers, lines, seed=5, timeout=args.upload_timeout)
        upload_s = time.perf_counter() - began
        loop1, other1 = cpu_split(server.pid)
        sampler.stopped.set()
        sampler.join()
        hwm = memory_kb(server.pid, "VmHWM") if peak_reset else 0
        rss_after = memory_kb(server.pid, "VmRSS")
        peak = max(sampler.peak_kb, hwm)

        clear_jobs(redis_client, settings.key_prefix, keep)  # so Redis holds one upload's jobs at a time
        began = time.perf_counter()
        res = sdk.submit_batch(path)
        sdk_s = time.perf_counter() - began
        if res.sent != lines or res.errors:
            raise RuntimeError(f"submit_batch sent {res.sent} of {lines}, errors {res.errors[:5]}")
        clear_jobs(redis_client, settings.key_prefix, keep)

    upload_rate, sdk_rate = body["sent"] / upload_s, lines / sdk_s
    result("api_upload_lines", lines, "lines")
    result("api_upload_lines_per_s", upload_rate, "lines/s")
    result("api_sdk_submit_batch_lines_per_s", sdk_rate, "lines/s")
    result("api_upload_vs_sdk", upload_rate / sdk_rate, "x")
    result("api_upload_server_cpu_us_per_line", 1e6 * (loop1 - loop0 + other1 - other0) / lines, "us/line")
    result("api_upload_server_loop_cpu_us_per_line", 1e6 * (loop1 - loop0) / lines, "us/line")
    result("api_upload_server_rss_before_mb", rss_before / 1024, "MB")
    result("api_upload_server_rss_peak_mb", peak / 1024, "MB")
    result("api_upload_server_rss_growth_mb", (peak - rss_before) / 1024, "MB")
    result("api_upload_server_rss_after_mb", rss_after / 1024, "MB")
    how = "VmHWM after a clear_refs reset, and VmRSS every 50 ms" if peak_reset else "VmRSS every 50 ms"
    note(f"  peak RSS from {how}, summed over the server's processes")
    ratio = upload_rate / sdk_rate
    verdict = "met" if ratio >= TARGET_UPLOAD_RATIO else "MISSED"
    size = "" if lines == 100_000 else f" (this run: {lines} lines)"
    note(
        f"target upload >= {TARGET_UPLOAD_RATIO:.0%} of submit_batch at 100k lines{size}: {verdict} ({ratio:.0%})"
    )
    growth = (peak - rss_before) / 1024
    if lines >= 1_000_000:
        verdict = "met" if growth < TARGET_RSS_MB else "MISSED"
        note(f"target RSS growth < {TARGET_RSS_MB:g} MB for 1M lines: {verdict} ({growth:.0f} MB)")
    else:
        note(
            f"target RSS growth < {TARGET_RSS_MB:g} MB is for 1M lines (--lines 1000000); here {growth:.0f} MB"
        )


# -- profiling: the server under a harness -------------------------------------------------------


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
