"""Images/s of a real worker with its /metrics served and scraped every second vs with metrics off.

Each round starts two real `kandinsky-batch worker` processes (tiny model, CPU float32, one torch
thread each, their own key and queue prefixes): one with METRICS_PORT 0, one with a port that a
thread of this benchmark scrapes every `--scrape-interval` s while that worker runs. Fresh
processes every round, because two processes of the same code differ by a few per cent in speed
(`--control`, both off, shows it). After a warm-up batch each, the same `--n` text2img jobs (64x64,
decoder steps 2, prior steps 2, fixed seeds, `--chunk` jobs per message, micro-batches of up to 8)
go to one worker and then the other, the order alternating per round; a run is timed from submit
to every job terminal. Only one worker has work at a time. The workers' own CPU time per image
(from /proc) is reported beside the wall-clock rate, and the median of the rounds is the figure.

Two costs are also measured directly: the worker's CPU per scrape (100 scrapes of the idle "on"
worker, from /proc), and the in-process updates per image (timed here; they run in both workers,
port 0 only stops the server).

Run: python bench/metrics_overhead.py [--n 48] [--rounds 6] [--chunk 8] [--scrape-interval 1.0] [--control]
Target: metrics on >= 0.99x metrics off (a cost under 1 %).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import _common
import httpx
from _common import note, result

from kandinsky_batch.schema import JobState
from kandinsky_batch.settings import Settings
from producer.client import Client
from producer.launch import WorkerProcess
from worker import metrics
from worker.tiny import make_tiny

TARGET_RATIO = 0.99
SETTLE_S = 3.0  # idle after both warm-ups: the run right after them was a few per cent slower
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


class Scraper:
    """Scrapes a /metrics URL every `interval` s while running; counts scrapes and their latency."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Scraper:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        with httpx.Client(timeout=10) as client:
            while True:
                started = time.perf_counter()
                answer = client.get(self.url)
                answer.raise_for_status()
                self.latencies.append(time.perf_counter() - started)
                if "kandinsky_batch_jobs_total" not in answer.text:
                    raise RuntimeError(f"{self.url} answered without the worker's metrics")
                if self._stop.wait(self.interval):
                    return


class Run:
    """One configuration: a fresh worker per round (`start`/`stop`), and `__call__` runs one timed batch."""

    def __init__(self, name: str, settings: Settings, logs: Path, scraper: Scraper | None) -> None:
        self.name = name
        self.settings = settings
        self.logs = logs
        self.scraper = scraper
        self.client = Client(settings)
        self.worker: WorkerProcess | None = None
        self.rates: list[float] = []
        self.cpu_ms: list[float] = []

    def start(self, round_: int) -> None:
        self.worker = WorkerProcess(self.settings, self.logs / f"{self.name}-{round_}.log").start()

    def stop(self) -> None:
        if self.worker is not None and self.worker.stop() != 0:
            raise RuntimeError(f"{self.name}: the worker did not stop cleanly\n{self.worker.log()}")
        self.worker = None

    def pid(self) -> int:
        assert self.worker is not None and self.worker.proc is not None
        return self.worker.proc.pid

    def __call__(self, specs: list[dict[str, object]], timed: bool = True) -> float:
        assert self.worker is not None
        images = len(specs)
        cpu_before = cpu_seconds(self.pid())
        started = time.perf_counter()
        with self.scraper if self.scraper is not None else nullcontext():
            batch = self.client.submit_batch(specs).batch_id
            final = self.client.wait(batch, timeout=1800, poll_s=0.02)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(self.pid()) - cpu_before
        counts = getattr(final, "counts", {})
        if counts.get(JobState.SUCCEEDED) != len(specs):
            raise RuntimeError(f"{self.name}: not every job succeeded: {counts}\n{self.worker.log()}")
        if timed:
            self.rates.append(images / elapsed)
            self.cpu_ms.append(1e3 * cpu / images)
        return images / elapsed

    def kill(self) -> None:
        if self.worker is not None:
            self.worker.kill()
        self.client.close()


def scrape_cpu_ms(run: Run, url: str, scrapes: int = 100) -> float:
    """The worker's CPU time per scrape, idle: what serving /metrics itself costs it."""
    before = cpu_seconds(run.pid())
    with httpx.Client(timeout=10) as client:
        for _ in range(scrapes):
            client.get(url).raise_for_status()
    return 1e3 * (cpu_seconds(run.pid()) - before) / scrapes


def update_cost_us(images_per_batch: int = 8, repeats: int = 2000) -> float:
    """Microseconds of in-process metric updates per image: what one job of one image makes happen."""
    started = time.perf_counter()
    for _ in range(repeats):
        metrics.MICRO_BATCH.observe(images_per_batch)
        metrics.generated("text2img", images_per_batch, 0.5)
        for _ in range(images_per_batch):
            metrics.QUEUE_WAIT.labels("text2img").observe(1.0)
            metrics.IMAGES.labels("text2img").inc()
            metrics.UPLOAD.observe(0.01)
            metrics.job_done("text2img", "succeeded")
            for _ in range(2):  # decoder steps
                metrics.progressed()
    return 1e6 * (time.perf_counter() - started) / (repeats * images_per_batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=48, help="jobs per run (one image each)")
    parser.add_argument("--rounds", type=int, default=6, help="timed runs of each configuration")
    parser.add_argument("--chunk", type=int, default=8, help="jobs per queue message")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument(
        "--control", action="store_true", help="both workers with metrics off: the noise floor of the ratio"
    )
    args = parser.parse_args(argv)

    redis_client = _common.connect()
    tags = {"off": _common.new_tag(), "on": _common.new_tag()}
    _common.stop_on_sigterm()
    _common.machine_note()
    runs: dict[str, Run] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            models = make_tiny(tmp / "models")
            port = free_port()
            url = f"http://127.0.0.1:{port}/metrics"
            for name, tag in tags.items():
                metered = name == "on" and not args.control
                settings = _common.tiny_settings(
                    tag,
                    models,
                    tmp,
                    torch_threads=1,
                    modes=["text2img"],
                    chunk_size=args.chunk,
                    worker_name=f"bench-{name}",
                    ready_file=tmp / f"ready-{name}",
                    metrics_port=port if metered else 0,
                    metrics_host="127.0.0.1",
                    log_format="json",
                )
                runs[name] = Run(name, settings, tmp, Scraper(url, args.scrape_interval) if metered else None)
            texts = _common.prompts(args.n, seed=11)
            specs: list[dict[str, object]] = [
                {
                    "prompt": text,
                    "height": 64,
                    "width": 64,
                    "num_inference_steps": 2,
                    "prior_num_inference_steps": 2,
                    "seed": 500 + i,
                }
                for i, text in enumerate(texts)
            ]
            scrape_ms: float | None = None
            for round_ in range(1, args.rounds + 1):
                order = ["off", "on"] if round_ % 2 else ["on", "off"]
                for name in order:
                    runs[name].start(round_)
                    # Warm-up: oneDNN builds its kernels per shape.
                    runs[name](specs[: 2 * args.chunk], timed=False)
                time.sleep(SETTLE_S)
                seen = [f"{name} {runs[name](specs):.3f}" for name in order]
                note(f"round {round_} images/s: " + ", ".join(seen))
                if round_ == args.rounds and runs["on"].scraper is not None:
                    scrape_ms = scrape_cpu_ms(runs["on"], url)
                for name in order:
                    runs[name].stop()

            off, on = runs["off"], runs["on"]
            rate_off, rate_on = statistics.median(off.rates), statistics.median(on.rates)
            result("metrics_off_images_per_s", rate_off, "images/s")
            result("metrics_on_images_per_s", rate_on, "images/s")
            result("metrics_on_vs_off", rate_on / rate_off, "x")
            result("metrics_off_cpu_per_image", statistics.median(off.cpu_ms), "ms/image")
            result("metrics_on_cpu_per_image", statistics.median(on.cpu_ms), "ms/image")
            if on.scraper is not None and scrape_ms is not None:
                latencies = on.scraper.latencies
                result("metrics_scrapes", len(latencies), "scrapes")
                result("metrics_scrape_p50", 1e3 * statistics.median(latencies), "ms")
                result("metrics_scrape_worker_cpu", scrape_ms, "ms/scrape")
            else:
                note("--control: the 'on' worker ran with metrics off too, unscraped")
            result("metrics_updates_per_image", update_cost_us(), "us")
            ratio = rate_on / rate_off
            verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
            note(f"target metrics on >= {TARGET_RATIO}x off (median of {args.rounds} rounds): {verdict}")
        _common.machine_note()
    finally:
        for run in runs.values():
            run.kill()
        for tag in tags.values():
            _common.finish(redis_client, tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
