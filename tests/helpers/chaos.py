"""A chaos run: several real workers and a Redis of their own (AOF, appendfsync always) under random
faults, then a drain and every check of the delivery guarantees.

Faults, one every `min_gap_s`..`max_gap_s`: SIGKILL a worker, SIGTERM a worker, SIGSTOP a worker
past its lease then SIGCONT it, SIGKILL Redis and start it again on its AOF, and bursts of submits.
A supervisor restarts workers that exited, as Kubernetes would. `tests/integration/test_chaos.py`
runs a short form; `bench/chaos.py` a long one with its figures as RESULT lines.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import redis

from kandinsky_batch.errors import NotFound
from kandinsky_batch.schema import JobState, JobStatus, is_finished
from kandinsky_batch.settings import Settings
from producer.client import Client
from producer.launch import WorkerProcess

TINY = {"height": 64, "width": 64, "num_inference_steps": 3, "prior_num_inference_steps": 2}
FAULTS = ("sigkill", "sigterm", "sigstop", "redis", "burst")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A redis-server of the run's own, with AOF fsynced on every write; killable and restartable."""

    def __init__(self, folder: Path, binary: str = "redis-server") -> None:
        self.folder, self.binary, self.port = folder, binary, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--appendonly", "yes", "--appendfsync", "always", "--save", ""]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    if client.ping():
                        return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the chaos Redis did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@dataclass
class Report:
    jobs: int = 0
    batches: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    states: Counter[str] = field(default_factory=Counter)
    lost: int = 0  # jobs not terminal after the drain
    duplicated: int = 0  # jobs that ran on two workers at once
    late_writes: int = 0  # files written after their job succeeded, or by another worker
    fenced: int = 0  # times a worker stopped writing for jobs whose lease it had lost
    problems: list[str] = field(default_factory=list)
    drain_s: float = 0.0

    def lines(self) -> list[str]:
        faults = " ".join(f"{k}={self.faults[k]}" for k in FAULTS)
        states = " ".join(f"{k}={v}" for k, v in sorted(self.states.items()))
        return [
            f"jobs {self.jobs} in {self.batches} batches; faults {faults}",
            f"end states {states}; lost {self.lost}; duplicated {self.duplicated}; "
            f"late writes {self.late_writes}; writes fenced off {self.fenced}; drained in {self.drain_s:.1f} s",
            *self.problems[:20],
        ]


class Chaos:
    def __init__(
        self, settings: Settings, root: Path, redis_server: OwnRedis, workers: int, seed: int
    ) -> None:
        self.settings, self.root, self.redis_server = settings, root, redis_server
        self.rng = random.Random(seed)
        self.slots: list[WorkerProcess | None] = [None] * workers
        self.starts = 0
        self.paused: set[int] = set()
        self.stopped = threading.Event()
        self.batches: dict[str, int] = {}  # batch id -> jobs submitted
        self.burst = (10, 40)  # jobs per burst of submits (set by `run`)
        self.report = Report()
        self.lock = threading.Lock()

    # -- workers --------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        with self.lock:
            self.starts += 1
            name = f"w{slot}-{self.starts}"
        settings = self.settings.model_copy(
            update={"worker_name": name, "ready_file": self.root / f"ready-{name}"}
        )
        proc = WorkerProcess(settings, self.root / f"{name}.log", module="tests.helpers.fault_worker",
                             env={"KB_TEST_STEP_SLEEP_S": "0.05"})  # fmt: skip
        self.slots[slot] = proc
        # A worker that cannot start (Redis down at that moment) exits; the supervisor starts another.
        with suppress(RuntimeError):
            proc.start(timeout=180)

    def supervise(self) -> None:
        """Restart any worker that exited (after a SIGKILL or a SIGTERM), like a Deployment would."""
        while not self.stopped.wait(0.5):
            for slot, proc in enumerate(self.slots):
                if proc is not None and proc.proc is not None and proc.proc.poll() is not None:
                    self.slots[slot] = None
                    threading.Thread(target=self._spawn, args=(slot,), daemon=True).start()

    def live(self) -> list[tuple[int, WorkerProcess]]:
        return [
            (i, p) for i, p in enumerate(self.slots) if p is not None and p.alive() and i not in self.paused
        ]

    # -- faults ---------------------------------------------------------------------------

    def submit_burst(self, n: int) -> None:
        batch_id = f"chaos{len(self.batches):03d}{self.rng.randrange(16**6):06x}"
        specs = [
            {"prompt": f"chaos {batch_id} {i}", "seed": self.rng.randrange(2**32), **TINY} for i in range(n)
        ]
        self.batches[batch_id] = n
        for _ in range(60):  # Redis may be down for a moment: resubmitting sends only what was not sent
            try:
                with Client(self.settings) as client:
                    client.submit_batch(specs, batch_id=batch_id)
                return
            except redis.RedisError:
                time.sleep(1)
        self.report.problems.append(f"batch {batch_id} could not be submitted")

    def fault(self) -> None:
        kind = self.rng.choice(FAULTS)
        live = self.live()
        if kind in ("sigkill", "sigterm", "sigstop") and not live:
            kind = "burst"
        self.report.faults[kind] += 1
        if kind == "burst":
            size = self.rng.randint(*self.burst)
            threading.Thread(target=self.submit_burst, args=(size,), daemon=True).start()
        elif kind == "redis":
            self.redis_server.kill()
            time.sleep(self.rng.uniform(0.5, 2.0))
            self.redis_server.start()
        else:
            slot, proc = self.rng.choice(live)
            assert proc.proc is not None
            if kind == "sigkill":
                proc.proc.kill()
            elif kind == "sigterm":
                proc.proc.send_signal(signal.SIGTERM)
            else:
                threading.Thread(target=self._pause, args=(slot, proc), daemon=True).start()

    def _pause(self, slot: int, proc: WorkerProcess) -> None:
        """SIGSTOP past the lease (so a reaper hands its jobs to others), then SIGCONT."""
        assert proc.proc is not None
        self.paused.add(slot)
        proc.proc.send_signal(signal.SIGSTOP)
        time.sleep(self.settings.lease_ttl_s * self.rng.uniform(1.5, 2.5))
        proc.proc.send_signal(signal.SIGCONT)
        self.paused.discard(slot)

    # -- the run --------------------------------------------------------------------------

    def run(
        self,
        duration_s: float,
        gap_s: tuple[float, float],
        drain_timeout_s: float,
        burst: tuple[int, int] = (10, 40),
    ) -> Report:
        """Faults for `duration_s`, one every `gap_s` s; bursts of `burst` jobs; then drain and check."""
        self.burst = burst
        threads = [threading.Thread(target=self._spawn, args=(slot,)) for slot in range(len(self.slots))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        supervisor = threading.Thread(target=self.supervise, daemon=True)
        supervisor.start()
        self.submit_burst(burst[1])
        end = time.monotonic() + duration_s
        while time.monotonic() < end:
            time.sleep(self.rng.uniform(*gap_s))
            self.fault()
        drained = time.monotonic()  # the drain: from the last fault until every batch is done
        time.sleep(self.settings.lease_ttl_s * 3)  # let the last pause end and its leases expire
        self.wait_drained(drain_timeout_s)
        self.report.drain_s = time.monotonic() - drained
        self.stopped.set()
        self.check()
        return self.report

    def wait_drained(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with Client(self.settings) as client:
            while time.monotonic() < deadline:
                try:
                    if all(client.status_store.batch(b).done for b in self.batches):
                        return
                except (NotFound, redis.RedisError):  # a submit still retrying; Redis restarting
                    pass
                time.sleep(1)

    def stop(self) -> None:
        self.stopped.set()
        for proc in self.slots:
            if proc is not None and proc.proc is not None:
                if proc.proc.poll() is None:
                    proc.proc.send_signal(signal.SIGCONT)
                proc.kill()

    # -- checks ---------------------------------------------------------------------------

    def check(self) -> None:
        r = self.report
        with Client(self.settings) as client:
            running_twice = self._ran_twice_at_once(client)
            for batch_id, submitted in self.batches.items():
                r.batches += 1
                jobs = list(client.jobs(batch_id))
                batch = client.status_store.batch(batch_id)
                r.jobs += len(jobs)
                if batch.total != submitted or len(jobs) != submitted:
                    r.problems.append(
                        f"{batch_id}: {submitted} submitted, total {batch.total}, {len(jobs)} jobs"
                    )
                counted = Counter(job.state for job in jobs)
                if any(batch.counts[s] != counted.get(s, 0) for s in JobState):
                    r.problems.append(f"{batch_id}: counters {batch.counts} != job states {dict(counted)}")
                for job in jobs:
                    r.states[job.state.value] += 1
                    if not is_finished(job):
                        r.lost += 1
                    if job.job_id in running_twice:
                        r.duplicated += 1
                self._check_files(batch_id, jobs)
                self._check_manifest(batch_id, jobs)
        self._check_no_temp_files()
        for log in self.root.glob("w*.log"):
            text = log.read_text(errors="replace")
            r.fenced += sum(text.count(m) for m in ("leases are gone", "lost its lease"))

    def _ran_twice_at_once(self, client: Client) -> set[str]:
        """Jobs with `running` followed by `running` in the event stream (two workers at once)."""
        last: dict[str, str] = {}
        twice: set[str] = set()
        for _, job, state in client.status_store.events_after("0-0", 10**7):
            if state.value == "running" and last.get(job) == "running":
                twice.add(job)
            last[job] = state.value
        return twice

    def _store(self) -> Path:
        return Path(urlparse(self.settings.storage_url).path)

    def _check_files(self, batch_id: str, jobs: list[JobStatus]) -> None:
        folder = self._store() / batch_id
        for job in jobs:
            images = (
                sorted(p.name for p in (folder / job.job_id).glob("*"))
                if (folder / job.job_id).exists()
                else []
            )
            meta_path = folder / f"{job.job_id}.json"
            if job.state is not JobState.SUCCEEDED:
                continue
            if images != ["0.png"] or not meta_path.exists():
                self.report.problems.append(f"{job.job_id}: files {images}, metadata {meta_path.exists()}")
                continue
            meta = json.loads(meta_path.read_text())
            written = max(p.stat().st_mtime for p in [meta_path, folder / job.job_id / "0.png"])
            late = job.finished_at is not None and written > job.finished_at + 0.5
            if late or meta["worker"] != job.worker or meta["attempt"] != job.attempts:
                self.report.late_writes += 1
                self.report.problems.append(
                    f"{job.job_id}: written {written:.3f} after success {job.finished_at}, "
                    f"by {meta['worker']} (attempt {meta['attempt']}), status names {job.worker} ({job.attempts})"
                )
        extra = (
            {p.name for p in folder.iterdir()} - {j.job_id for j in jobs} - {f"{j.job_id}.json" for j in jobs}
        )
        if folder.exists() and extra - {"manifest.jsonl"}:
            self.report.problems.append(f"{batch_id}: unexpected objects {sorted(extra)[:5]}")

    def _check_manifest(self, batch_id: str, jobs: list[JobStatus]) -> None:
        path = self._store() / batch_id / "manifest.jsonl"
        if not path.exists():
            self.report.problems.append(f"{batch_id}: no manifest")
            return
        listed = [json.loads(line)["job_id"] for line in path.read_text().splitlines()]
        if sorted(listed) != sorted(j.job_id for j in jobs):
            self.report.problems.append(f"{batch_id}: manifest lists {len(listed)} of {len(jobs)} jobs")

    def _check_no_temp_files(self) -> None:
        temps = [str(p) for p in self._store().rglob(".tmp-*")]
        if temps:
            self.report.problems.append(f"temp files left: {temps[:5]}")


@contextmanager
def chaos_run(root: Path, tiny_models: Path, workers: int = 3, seed: int = 0) -> Iterator[Chaos]:
    """A Chaos over its own Redis and storage under `root`; everything is stopped on exit."""
    (root / "redis").mkdir(parents=True, exist_ok=True)
    server = OwnRedis(root / "redis")
    server.start()
    settings = Settings(
        redis_url=server.url,
        storage_url=(root / "store").as_uri(),
        prior_model=str(tiny_models / "prior"),
        decoder_model=str(tiny_models / "decoder"),
        inpaint_model=str(tiny_models / "inpaint"),
        device="cpu",
        dtype="float32",
        torch_threads=1,
        modes=["text2img"],
        lease_ttl_s=3.0,
        chunk_size=4,
        shutdown_grace_s=3.0,
        progress_interval_s=0.0,
        retry_backoff_s=0.5,
        retry_backoff_max_s=2.0,
        visibility_timeout_s=3600,
    )
    chaos = Chaos(settings, root, server, workers, seed)
    try:
        yield chaos
    finally:
        chaos.stop()
        server.stop()


def summary(report: Report) -> dict[str, Any]:
    return {"jobs": report.jobs, "lost": report.lost, "duplicated": report.duplicated,
            "late_writes": report.late_writes, "problems": len(report.problems)}  # fmt: skip
