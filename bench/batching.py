"""Images/s one at a time vs micro-batched, on the tiny model, through the project's Engine and bare diffusers.

The same `--n` text2img jobs (64x64, decoder steps cycling 2, 3, 4, prior steps 2, fixed seeds) run through
`worker.engine.Engine` (PipelineCache, FileStorage in a temp dir, StatusStore on the real Redis; jobs made
with `StatusStore.create_jobs`) once with `max_batch_size=1` and once with `--batch` (8). Then a bare loop
calls the prior and decoder pipelines directly, with per-image generators, at the same two batch sizes, so
the engine's own overhead shows; that overhead (status writes, PNG encoding, storage, metadata) is also
timed directly, as the engine's time outside its diffusers calls. After a warm-up, each
configuration runs `--rounds` times, interleaved; the best round of each is reported. torch's thread count
is left at its default unless `--threads` is given, and printed. Float32 on the CPU. On a 2-core machine
other busy processes make torch's threads wait for each other at every op: read the load average line.

Run: python bench/batching.py [--n 48] [--batch 8] [--rounds 2] [--threads N] [--profile]
Target: engine images/s at batch 8 >= 1.25x batch 1.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import _common
import torch
from _common import note, result
from PIL import Image

from kandinsky_batch.keys import JobRef, Keys, job_id
from kandinsky_batch.schema import JobSpec, JobState, Mode
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage.file import FileStorage
from kandinsky_batch.store.status import StatusStore
from worker.engine import Engine
from worker.generate import Item, StepCallback
from worker.jobs import Job
from worker.pipelines import PipelineCache
from worker.tiny import make_tiny

TARGET_RATIO = 1.25


def make_specs(n: int) -> list[JobSpec]:
    texts = _common.prompts(n, seed=5)
    return [
        JobSpec(
            prompt=text,
            height=64,
            width=64,
            num_inference_steps=2 + i % 3,
            prior_num_inference_steps=2,
            seed=1000 + i,
        )
        for i, text in enumerate(texts)
    ]


class EngineRunner:
    """Runs specs as one fresh batch of jobs through an Engine; checks that every job succeeded."""

    def __init__(self, engine: Engine, status: StatusStore) -> None:
        self.engine = engine
        self.status = status
        self.runs = 0
        self.last_batch = ""
        self.generate_s = 0.0  # of the last run, inside the diffusers calls; the rest is the engine's own
        inner = engine.generate_fn

        def timed_generate(
            cache: PipelineCache, items: list[Item], on_step: StepCallback
        ) -> list[Image.Image]:
            started = time.perf_counter()
            try:
                return inner(cache, items, on_step)
            finally:
                self.generate_s += time.perf_counter() - started

        engine.generate_fn = timed_generate

    def __call__(self, specs: list[JobSpec]) -> float:
        self.runs += 1
        batch = f"b{self.engine.settings.max_batch_size}-{self.runs}"
        jobs = [Job(JobRef(batch, i), spec) for i, spec in enumerate(specs)]
        self.status.create_jobs(
            batch, [(job.index, spec.seed or 0) for job, spec in zip(jobs, specs, strict=True)]
        )
        self.generate_s = 0.0
        started = time.perf_counter()
        self.engine.run(jobs)
        elapsed = time.perf_counter() - started
        counts = self.status.batch(batch).counts
        if counts[JobState.SUCCEEDED] != len(jobs):
            raise RuntimeError(f"engine run {batch}: not every job succeeded: {counts}")
        self.last_batch = batch
        return elapsed

    def micro_batch_size(self, job: str) -> int:
        """The micro-batch size recorded in a job's metadata (proof that batching happened)."""
        meta_uri = self.status.job(job).metadata or ""
        meta = json.loads(Path(unquote(urlparse(meta_uri).path)).read_text())
        return int(meta["batch"]["size"])


def bare_loop(cache: PipelineCache, batch_size: int) -> Callable[[list[JobSpec]], float]:
    """Prior + decoder called directly, images grouped by step count as the engine groups them."""

    def run(specs: list[JobSpec]) -> float:
        groups: dict[int, list[JobSpec]] = {}
        for spec in specs:
            groups.setdefault(spec.num_inference_steps, []).append(spec)
        started = time.perf_counter()
        for steps, group in groups.items():
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                prompts = [s.prompt for s in chunk]
                prior = cache.prior()(
                    prompt=prompts,
                    num_inference_steps=chunk[0].prior_num_inference_steps,
                    guidance_scale=chunk[0].prior_guidance_scale,
                    generator=[torch.Generator("cpu").manual_seed(s.seed or 0) for s in chunk],
                )
                images = cache.text2img()(
                    prompt=prompts,
                    image_embeds=prior.image_embeds,
                    negative_image_embeds=prior.negative_image_embeds,
                    height=chunk[0].height,
                    width=chunk[0].width,
                    num_inference_steps=steps,
                    guidance_scale=chunk[0].guidance_scale,
                    generator=[torch.Generator("cpu").manual_seed(s.seed or 0) for s in chunk],
                    output_type="pil",
                ).images
                assert len(images) == len(chunk)
        return time.perf_counter() - started

    return run


# (file suffix, function) of the parts of a Kandinsky call; none of them nests inside another but the two calls.
_COMPONENTS = {
    "prior pipeline call": ("pipeline_kandinsky_prior.py", "__call__"),
    "  prior prompt encoding": ("pipeline_kandinsky_prior.py", "_encode_prompt"),
    "  prior transformer": ("prior_transformer.py", "forward"),
    "decoder pipeline call": ("pipeline_kandinsky.py", "__call__"),
    "  decoder prompt encoding": ("pipeline_kandinsky.py", "_encode_prompt"),
    "  decoder UNet": ("unet_2d_condition.py", "forward"),
    "  MoVQ decode (latents to pixels)": ("vq_model.py", "decode"),
    "  to PIL": ("pipeline_utils.py", "numpy_to_pil"),
}


def components(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of each Kandinsky component in a profile."""
    out = dict.fromkeys(_COMPONENTS, 0.0)
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, func), row in table.items():
        for label, (suffix, name) in _COMPONENTS.items():
            if func == name and filename.endswith(suffix):
                out[label] += float(row[3])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--n", type=int, default=48, help="jobs per run (48: whole batches of 8 per step count)"
    )
    parser.add_argument("--batch", type=int, default=8, help="micro-batch size to compare with 1")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each configuration")
    parser.add_argument("--profile", action="store_true", help="cProfile one engine run at each batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    default_threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    redis_client = _common.connect()
    tag = _common.new_tag()
    _common.stop_on_sigterm()
    _common.machine_note()
    how = "torch's default" if args.threads is None else f"set by --threads; default {default_threads}"
    note(f"torch {torch.__version__}, {torch.get_num_threads()} threads ({how})")
    result("torch_num_threads", torch.get_num_threads(), "threads")
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            started = time.perf_counter()
            models = make_tiny(tmp / "models")
            note(f"tiny model built in {time.perf_counter() - started:.1f} s")

            def settings_for(batch_size: int) -> Settings:
                return _common.tiny_settings(tag, models, tmp, max_batch_size=batch_size)

            cache = PipelineCache(settings_for(1))
            started = time.perf_counter()
            cache.warm([Mode.TEXT2IMG])
            note(f"prior + decoder loaded in {time.perf_counter() - started:.2f} s")
            status = StatusStore(redis_client, Keys(tag), ttl_s=3600)
            storage = FileStorage(tmp / "store")
            engines = {
                size: EngineRunner(Engine(settings_for(size), cache, storage, status, "bench"), status)
                for size in (1, args.batch)
            }
            configs: dict[str, Callable[[list[JobSpec]], float]] = {
                "engine_batch1": engines[1],
                f"engine_batch{args.batch}": engines[args.batch],
                "bare_batch1": bare_loop(cache, 1),
                f"bare_batch{args.batch}": bare_loop(cache, args.batch),
            }
            specs = make_specs(args.n)
            # Warm-up: oneDNN builds kernels per tensor shape, so run every batch size that will be timed
            # (a tail shorter than --batch is a shape too: --n 48 leaves none with steps 2, 3, 4).
            warm = [spec for spec in make_specs(3 * args.batch) if spec.num_inference_steps == 2]
            for run in configs.values():
                run(warm)

            best: dict[str, float] = {}
            own: dict[int, float] = {}  # engine seconds outside the diffusers calls, smallest seen
            for round_ in range(1, args.rounds + 1):
                seen = []
                for name, run in configs.items():
                    elapsed = run(specs)
                    best[name] = min(best.get(name, elapsed), elapsed)
                    seen.append(f"{name} {args.n / elapsed:.2f}")
                    if isinstance(run, EngineRunner):
                        size_ = run.engine.settings.max_batch_size
                        own[size_] = min(own.get(size_, elapsed), elapsed - run.generate_s)
                note(f"round {round_} images/s: " + ", ".join(seen))
            batched = engines[args.batch]
            size = batched.micro_batch_size(job_id(batched.last_batch, 0))
            note(f"engine micro-batch recorded in job metadata at batch {args.batch}: {size} images")

            rates = {name: args.n / seconds for name, seconds in best.items()}
            for name, rate in rates.items():
                result(f"{name}_images_per_s", rate, "images/s")
            engine_ratio = rates[f"engine_batch{args.batch}"] / rates["engine_batch1"]
            bare_ratio = rates[f"bare_batch{args.batch}"] / rates["bare_batch1"]
            result(f"engine_batch{args.batch}_vs_batch1", engine_ratio, "x")
            result(f"bare_batch{args.batch}_vs_batch1", bare_ratio, "x")
            for size_ in (1, args.batch):
                # Measured inside the engine's own run, so it does not carry the noise of comparing two runs.
                result(f"engine_own_time_batch{size_}", 1e3 * own[size_] / args.n, "ms/image")
                result(f"engine_own_share_batch{size_}", 100 * own[size_] / best[f"engine_batch{size_}"], "%")
            verdict = "met" if engine_ratio >= TARGET_RATIO else "MISSED"
            note(
                f"target engine batch {args.batch} >= {TARGET_RATIO}x batch 1: {verdict} ({engine_ratio:.2f}x)"
            )

            if args.profile:
                for size_ in (1, args.batch):
                    profiler = cProfile.Profile()
                    profiler.runcall(engines[size_], specs)
                    note(f"--- cProfile, engine at batch {size_} (top 20 by cumulative time) ---")
                    pstats.Stats(profiler).sort_stats("cumulative").print_stats(20)
                for size_ in (1, args.batch):
                    profiler = cProfile.Profile()
                    profiler.runcall(configs[f"bare_batch{size_}"], specs)
                    note(f"--- bare loop at batch {size_}: where an image's time goes (profiled) ---")
                    for label, seconds in components(pstats.Stats(profiler)).items():
                        note(f"  {label:34s} {1e3 * seconds / args.n:7.1f} ms/image")
        _common.machine_note()
    finally:
        _common.finish(redis_client, tag)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
