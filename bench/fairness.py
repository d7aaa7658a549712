"""Fair share between tenants over the HTTP API: one worker, tenants with keys of their own.

Three parts, each on a fresh queue prefix, a real `kandinsky-batch api` process and one real worker
(tiny model, CPU, 64x64, 2 + 2 steps, micro-batches of `--batch`):

1. Tenant A uploads `--backlog` jobs. Once they run, tenant B sends `--singles` single jobs, one every
   `--every` seconds. B's queue wait is from the moment its submit was answered to the job's
   `started_at` (the store keeps `created_at` in whole seconds, too coarse here), in seconds and in A's micro-batches that started meanwhile; a micro-batch's time is
   the median gap between A's successive micro-batch starts in the same run. Target: B's longest wait is at
   most 2 micro-batches (first in, first out: the whole backlog).
2. Two tenants of equal weight upload `--pair` jobs each at once. When half of all are done, each
   one's succeeded jobs. Target: min/max >= 0.8.
3. The same with weights 2:1. Target: the share ratio within 15 % of 2.

Run: python bench/fairness.py [--backlog 1000] [--singles 10] [--every 2] [--pair 500] [--batch 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _common
import httpx
from _common import note, result
from api_load import Server, free_port

from kandinsky_batch.keys import Keys
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from producer.launch import WorkerProcess
from worker.tiny import make_tiny

SPEC = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


class Stack:
    """The API, one worker and a key per tenant, under a prefix of their own."""

    def __init__(self, work: Path, models: Path, batch: int, weights: dict[str, int]) -> None:
        self.tag = _common.new_tag()
        self.settings: Settings = _common.tiny_settings(
            self.tag,
            models,
            work / self.tag,
            max_batch_size=batch,
            modes=["text2img"],
            ready_file=work / f"{self.tag}.ready",
            api_host="127.0.0.1",
            api_port=free_port(),
        )
        self.redis = _common.connect()
        api_keys = ApiKeys(self.redis, Keys(self.settings.key_prefix))
        self.keys = {
            tenant: api_keys.create(tenant, rate_per_s=10_000, max_queued=1_000_000, weight=weight)[1]
            for tenant, weight in weights.items()
        }
        self.worker_log = work / f"{self.tag}.worker.log"
        self.worker = WorkerProcess(self.settings, self.worker_log).start(timeout=300)
        self.server = Server(self.settings, work / f"{self.tag}.api.log")

    def http(self, tenant: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[tenant]}"}
        return httpx.Client(base_url=self.server.url, headers=headers, timeout=120)

    def upload(self, tenant: str, jobs: int, seed: int) -> str:
        lines = "".join(
            f'{{"prompt": "{p}", "seed": {seed + i}}}\n' for i, p in enumerate(_common.prompts(jobs))
        )
        with self.http(tenant) as http:
            answer = http.post(
                "/v1/batches",
                params={"defaults": json.dumps(SPEC)},
                content=lines.encode(),
                headers={"Content-Type": "application/x-ndjson"},
            )
        if answer.status_code != 202 or answer.json()["sent"] != jobs:
            raise RuntimeError(f"upload answered {answer.status_code}: {answer.text[:300]}")
        return str(answer.json()["batch_id"])

    def counts(self, tenant: str, batch_id: str) -> dict[str, int]:
        with self.http(tenant) as http:
            return dict(http.get(f"/v1/batches/{batch_id}").json()["counts"])

    def starts(self, tenant: str, batch_id: str) -> list[float]:
        """When each started job of the batch started, read a page at a time."""
        found: list[float] = []
        cursor: int | None = 0
        with self.http(tenant) as http:
            while cursor is not None:
                page = http.get(
                    f"/v1/batches/{batch_id}/jobs", params={"cursor": cursor, "limit": 500}
                ).json()
                found += [job["started_at"] for job in page["jobs"] if job.get("started_at")]
                cursor = page["next_cursor"]
        return found

    def close(self) -> None:
        self.server.stop()
        self.worker.stop()
        _common.finish(self.redis, self.tag)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def small_behind_big(work: Path, models: Path, args: argparse.Namespace) -> None:
    stack = Stack(work, models, args.batch, {"a": 1, "b": 1})
    try:
        big = stack.upload("a", args.backlog, seed=1)
        wait_until(lambda: stack.counts("a", big).get("succeeded", 0) > 0, 300, "A's first jobs to run")
        singles: list[str] = []
        queued: list[float] = []  # when each submit was answered: the job was queued by then
        with stack.http("b") as http:
            for i in range(args.singles):
                answer = http.post("/v1/jobs", json={**SPEC, "prompt": f"a single job {i}", "seed": 7 + i})
                singles.append(answer.json()["job_id"])
                queued.append(time.time())
                time.sleep(args.every)

            def all_done() -> bool:
                return all(http.get(f"/v1/jobs/{j}").json()["state"] == "succeeded" for j in singles)

            wait_until(all_done, 600, "B's jobs")
            views = [http.get(f"/v1/jobs/{j}").json() for j in singles]
        waits = [v["started_at"] - at for v, at in zip(views, queued, strict=True)]
        # A's micro-batches that started while each of B's jobs waited (its jobs share a start).
        a_starts = sorted({round(t, 2) for t in stack.starts("a", big)})
        ahead = [
            sum(1 for t in a_starts if at < t < v["started_at"]) for v, at in zip(views, queued, strict=True)
        ]
        # One of A's micro-batches takes the median gap between A's successive starts.
        per_batch = statistics.median(b - a for a, b in itertools.pairwise(a_starts) if b - a > 0.05)
        left = args.backlog - stack.counts("a", big).get("succeeded", 0)
        result("small_tenant_wait_p50", statistics.median(waits), "s")
        result("small_tenant_wait_max", max(waits), "s")
        result("micro_batch_wall", per_batch, "s")
        result("small_tenant_wait_max_in_micro_batch_times", max(waits) / per_batch, "micro-batches")
        result("big_tenant_micro_batches_started_during_a_wait_max", max(ahead), "micro-batches")
        result("big_tenant_jobs_still_queued_at_end", left, "jobs")
        timed, counted = max(waits) <= 2 * per_batch, max(ahead) <= 2
        note(f"target: B's max wait <= 2 micro-batches: {'met' if timed else 'NOT met'} in time, "
             f"{'met' if counted else 'NOT met'} in A's micro-batches started meanwhile")  # fmt: skip
    finally:
        stack.close()


def shares(work: Path, models: Path, args: argparse.Namespace, weights: dict[str, int], label: str) -> None:
    stack = Stack(work, models, args.batch, weights)
    try:
        batches: dict[str, str] = {}

        def upload(tenant: str, seed: int) -> None:
            batches[tenant] = stack.upload(tenant, args.pair, seed)

        threads = [threading.Thread(target=upload, args=(t, 100_000 * i)) for i, t in enumerate(weights)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        half = args.pair * len(weights) // 2
        done: dict[str, int] = {}

        def half_done() -> bool:
            done.update({t: stack.counts(t, b).get("succeeded", 0) for t, b in batches.items()})
            return sum(done.values()) >= half

        wait_until(half_done, 1200, "half of the jobs")
        (one, w1), (two, w2) = weights.items()
        first, second = done[one], done[two]
        for tenant, count in done.items():
            result(f"{label}_{tenant}_succeeded_at_half", count, "jobs")
        if w1 == w2:
            ratio = min(first, second) / max(first, second, 1)
            result(f"{label}_min_over_max", ratio, "x")
            note(f"target: min/max >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'}")
        else:
            ratio = first / max(second, 1)
            want = w1 / w2
            result(f"{label}_share_ratio", ratio, "x")
            result(f"{label}_share_ratio_vs_weights", ratio / want, "x")
            note(f"target: within 15 % of {want:g}: {'met' if abs(ratio / want - 1) <= 0.15 else 'NOT met'}")
    finally:
        stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=10)
    parser.add_argument("--every", type=float, default=2.0)
    parser.add_argument("--pair", type=int, default=500)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--parts", default="small,equal,weighted")
    args = parser.parse_args()
    _common.stop_on_sigterm()
    _common.machine_note()
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="kbb-fair-") as tmp:
        work = Path(tmp)
        models = make_tiny(work / "models")
        if "small" in parts:
            small_behind_big(work, models, args)
        if "equal" in parts:
            shares(work, models, args, {"c": 1, "d": 1}, "equal")
        if "weighted" in parts:
            shares(work, models, args, {"e": 2, "f": 1}, "weighted")


if __name__ == "__main__":
    main()
