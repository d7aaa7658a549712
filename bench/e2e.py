"""End to end on the CPU: single submits and a bulk file through a real worker, against bare diffusers.

`--n` text2img jobs (tiny model, 64x64, 2 decoder + 2 prior steps, fixed seeds, CPU float32, one torch
thread everywhere) run four ways in one run:
- a bare loop calling the prior and decoder pipelines directly, at batch 1 and at batch `--batch`,
  in this process (the images are made, never stored);
- the same jobs submitted one at a time (`Client.submit`, one message each), as a service submits;
- the same jobs as one bulk JSONL file (`Client.submit_batch`, chunks of 64 jobs per message);
both through one real worker process (`producer.launch.WorkerProcess`), warmed up first, timed from
the first submit to the last job's recorded finish time (so no polling delay counts). The worker stores every image, its metadata and status.
CLIP scoring is off by default (`--clip-score` turns it on), since the bare loop does not score.
The worker decodes latents to images (MoVQ) in its storing thread (`DECODE_IN_STORE=auto` on the
CPU), so it uses a second core that the bare loop leaves idle; `--decode-in-store off` measures it
decoding on the generating thread, as the bare loop does.
The worker's time outside its diffusers calls per job is the wall time minus the `generate_s` its log
reports per micro-batch, over the jobs.

Each path runs `--rounds` times (default 2), the four interleaved, and the best round of each counts.

Run: python bench/e2e.py [--n 48] [--batch 8] [--rounds 2] [--clip-score] [--decode-in-store auto|on|off]
Targets: single submits >= 0.95x the bare loop at batch 8; the bulk file >= 1.0x it.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import batching
import torch
from _common import note, result

from kandinsky_batch.schema import JobSpec, JobState
from kandinsky_batch.settings import Settings
from producer.client import Client
from producer.launch import WorkerProcess
from worker.pipelines import PipelineCache
from worker.tiny import make_tiny

SPEC = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}
TARGET_SINGLE, TARGET_BULK = 0.95, 1.0
GENERATED = re.compile(r"generated (\d+) images for (\d+) jobs in ([0-9.]+) s")


def specs(n: int, first_seed: int = 1000) -> list[dict[str, Any]]:
    texts = _common.prompts(n, seed=11)
    return [{"prompt": text, **SPEC, "seed": first_seed + i} for i, text in enumerate(texts)]


def bare_loop(cache: PipelineCache, jobs: list[dict[str, Any]], batch: int) -> float:
    """Seconds for the prior and decoder called directly, with one CPU generator per image."""
    return batching.bare_loop(cache, batch)([JobSpec(**job) for job in jobs])


def generate_seconds(log: str) -> tuple[float, list[int]]:
    """Seconds inside diffusers and micro-batch sizes, from the worker's "generated" lines."""
    found = GENERATED.findall(log)
    return sum(float(s) for _, _, s in found), [int(images) for images, _, _ in found]


def finished_after(client: Client, started: float, job_ids: list[str]) -> float:
    """Seconds from `started` (unix time) to the last job's recorded finish: no polling delay in it."""
    finals = [client.status_store.job(job_id) for job_id in job_ids]
    if any(f.state is not JobState.SUCCEEDED for f in finals):
        raise RuntimeError(f"not every job succeeded: {[f.state.value for f in finals]}")
    return max(f.finished_at or 0.0 for f in finals) - started


def run_singles(client: Client, jobs: list[dict[str, Any]]) -> float:
    started = time.time()
    ids = [client.submit(job) for job in jobs]
    for job_id in ids:
        client.wait(job_id, timeout=600, poll_s=0.05)
    return finished_after(client, started, ids)


def run_bulk(client: Client, jobs: list[dict[str, Any]], path: Path) -> float:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    started = time.time()
    submitted = client.submit_batch(path)
    client.wait(submitted.batch_id, timeout=600, poll_s=0.05)
    return finished_after(client, started, submitted.job_ids)


Figures = tuple[float, float, list[int]]  # wall s, s inside diffusers, micro-batch sizes


def measure(rounds: int, settings: Settings, n: int, work: Path, batch: int) -> dict[str, Figures]:
    """The best of `rounds` for each path, the four interleaved in every round so drift hits all."""
    jobs = specs(n)
    cache = PipelineCache(settings)
    cache.warm(list(settings.modes))
    for size in (1, batch):
        bare_loop(cache, jobs[:size], size)  # every shape once: oneDNN builds kernels per shape
    log_path = work / "worker.log"
    proc = WorkerProcess(settings, log_path).start(timeout=300)
    best: dict[str, Figures] = {}
    try:
        with Client(settings) as client:
            warm = specs(batch * 2, first_seed=1)
            run_singles(client, warm[:batch])
            run_bulk(client, warm[batch:], work / "warm.jsonl")
            for r in range(rounds):
                jobs = specs(
                    n, first_seed=1000 + r * n
                )  # new seeds: a resubmitted file would resume its batch
                for size in (1, batch):
                    wall = bare_loop(cache, jobs, size)
                    name = f"bare_b{size}"
                    if name not in best or wall < best[name][0]:
                        best[name] = (wall, wall, [size])
                for name in ("single", "bulk"):  # each timed from its first submit to its last finish
                    before = len(log_path.read_text(errors="replace"))
                    if name == "single":
                        wall = run_singles(client, jobs)
                    else:
                        wall = run_bulk(client, jobs, work / f"jobs-{r}.jsonl")
                    time.sleep(0.5)  # the last "generated" line is written before the job's status
                    inside, sizes = generate_seconds(log_path.read_text(errors="replace")[before:])
                    if name not in best or wall < best[name][0]:
                        best[name] = (wall, inside, sizes)
    finally:
        proc.stop()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="best of this many rounds of each path")
    parser.add_argument("--clip-score", action="store_true", help="let the worker score each image")
    parser.add_argument(
        "--decode-in-store",
        choices=["auto", "on", "off"],
        default="auto",
        help="the worker's DECODE_IN_STORE",
    )
    args = parser.parse_args()
    _common.stop_on_sigterm()
    _common.machine_note()
    torch.set_num_threads(1)
    client = _common.connect()
    tag = _common.new_tag()
    with tempfile.TemporaryDirectory(prefix="kbb-e2e-") as tmp:
        work = Path(tmp)
        models = make_tiny(work / "models")
        settings = _common.tiny_settings(
            tag,
            models,
            work,
            torch_threads=1,
            max_batch_size=args.batch,
            clip_score=args.clip_score,
            decode_in_store=args.decode_in_store,
            ready_file=work / "ready",
            modes=["text2img"],
        )
        try:
            figures = measure(args.rounds, settings, args.n, work, args.batch)
            bare = {size: args.n / figures.pop(f"bare_b{size}")[0] for size in (1, args.batch)}
            result("bare_loop_b1_images_per_s", bare[1], "images/s")
            result(f"bare_loop_b{args.batch}_images_per_s", bare[args.batch], "images/s")
            for name, (wall, inside, sizes) in figures.items():
                rate = args.n / wall
                result(f"{name}_images_per_s", rate, "images/s")
                result(f"{name}_vs_bare_b1", rate / bare[1], "x")
                result(f"{name}_vs_bare_b{args.batch}", rate / bare[args.batch], "x")
                result(f"{name}_mean_micro_batch", sum(sizes) / max(len(sizes), 1), "images")
                result(f"{name}_outside_diffusers_ms_per_job", 1000 * (wall - inside) / args.n, "ms")
            single = figures["single"][0]
            bulk = figures["bulk"][0]
            b = bare[args.batch]
            note(
                f"targets: single >= {TARGET_SINGLE}x bare b{args.batch}: "
                f"{'met' if args.n / single / b >= TARGET_SINGLE else 'NOT met'}; "
                f"bulk >= {TARGET_BULK}x: {'met' if args.n / bulk / b >= TARGET_BULK else 'NOT met'}"
            )
        finally:
            _common.finish(client, tag)


if __name__ == "__main__":
    main()
