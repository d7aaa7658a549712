"""What the CLIP score costs: scoring a micro-batch vs generating it, tiny model, CPU float32.

One PipelineCache with the tiny models (`worker.tiny.make_tiny`, in a temporary folder). A
micro-batch of `--batch` text2img images (64x64, decoder steps 2, prior steps 2, fixed seeds) is
generated with `worker.generate.generate` and then scored with `worker.clip.score_micro_batch`
(the engine's call: one batched pass of the prior's CLIP text and image encoders), `--rounds`
times after a warm-up of each; the median round is reported. No Redis, no storage: only the two
calls the engine makes. The tiny model's decoder is as small as its CLIP, so the ratio here is an
upper bound; with the real models the decoder's 100 steps dwarf one CLIP pass.

Run: python bench/clip_score.py [--batch 8] [--rounds 5] [--threads 1]
No target: the figure is what scoring adds per image (clip_score_ratio of the generate time).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import machine_note, note, result

from kandinsky_batch.schema import JobSpec, Mode
from kandinsky_batch.settings import Settings
from worker.clip import score_micro_batch
from worker.generate import Inputs, Item, decoded, generate
from worker.pipelines import PipelineCache
from worker.tiny import make_tiny

SPEC = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    machine_note()
    with tempfile.TemporaryDirectory(prefix="kbb-clip-") as tmp:
        models = make_tiny(Path(tmp) / "models")
        settings = Settings(
            prior_model=str(models / "prior"),
            decoder_model=str(models / "decoder"),
            inpaint_model=str(models / "inpaint"),
            device="cpu",
            dtype="float32",
            torch_threads=args.threads,
        )
        cache = PipelineCache(settings)
        cache.warm([Mode.TEXT2IMG])
        note(f"torch threads {torch.get_num_threads()}, batch {args.batch}, rounds {args.rounds}")
        items = [
            Item(f"j{i}", 0, JobSpec(prompt=f"a red fox number {i}", seed=100 + i, **SPEC), Inputs())
            for i in range(args.batch)
        ]
        prompts: list[str | None] = [it.spec.prompt for it in items]
        gen_s, score_s = [], []
        for n in range(args.rounds + 1):  # round 0 warms both up
            started = time.perf_counter()
            images = decoded(generate(cache, items, lambda _done, _all: None))  # the time to images
            mid = time.perf_counter()
            scores = score_micro_batch(cache, list(images), prompts)
            end = time.perf_counter()
            assert all(s is not None for s in scores), "scoring failed: see the warning above"
            if n:
                gen_s.append(mid - started)
                score_s.append(end - mid)
    generate_ms = 1000 * statistics.median(gen_s) / args.batch
    score_ms = 1000 * statistics.median(score_s) / args.batch
    ratio = score_ms / generate_ms
    result("generate_ms_per_image", generate_ms, "ms")
    result("clip_score_ms_per_image", score_ms, "ms")
    result("clip_score_ratio", ratio, "x")


if __name__ == "__main__":
    main()
