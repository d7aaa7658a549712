"""bench/api_load.py's upload part: a streamed JSONL upload against `Client.submit_batch` of the
same lines, in the same run, with the server's RSS sampled while it runs."""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import _common
import httpx
import procstat
import redis
from _common import note, result

from kandinsky_batch.settings import Settings
from producer.client import Client

TARGET_UPLOAD_RATIO, TARGET_RSS_MB = 0.5, 200.0
LINES_PER_CHUNK = 512  # JSONL lines per chunk of the streamed upload (~40 KB)


class Server(Protocol):
    """The API process under load (bench/api_load.py's `Server`)."""

    url: str

    @property
    def pid(self) -> int: ...


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
        self.peak_kb = procstat.memory_kb(pid, "VmRSS")
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            self.peak_kb = max(self.peak_kb, procstat.memory_kb(self.pid, "VmRSS"))


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

        rss_before = procstat.memory_kb(server.pid, "VmRSS")
        peak_reset = procstat.reset_peak(server.pid)
        sampler = RssSampler(server.pid)
        sampler.start()
        loop0, other0 = procstat.cpu_split(server.pid)
        began = time.perf_counter()
        body = upload(server, headers, lines, seed=5, timeout=args.upload_timeout)
        upload_s = time.perf_counter() - began
        loop1, other1 = procstat.cpu_split(server.pid)
        sampler.stopped.set()
        sampler.join()
        hwm = procstat.memory_kb(server.pid, "VmHWM") if peak_reset else 0
        rss_after = procstat.memory_kb(server.pid, "VmRSS")
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
