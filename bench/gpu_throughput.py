"""Full-size Kandinsky 2.1 text2img throughput on one GPU, with random weights: no download needed.

The architecture is the published one (`bench/full_size.py`, configs in `bench/kandinsky21/`), saved in
float16 to a temp folder and loaded back through `from_pretrained`, then driven through the worker's own
path (`worker.pipelines.PipelineCache` + `worker.generate.generate`, then `worker.outputs.encode_image`
to PNG, as the engine does) at each size, micro-batch and step count of the grid: eager, with the UNet
and MoVQ in channels_last, and (`--compile`) with `torch.compile` on the UNet and MoVQ decode. Each
configuration prints images/s, a time split (prior, UNet loop, MoVQ decode, PNG encode, the rest) and
the UNet's fraction of the FLOP-bound limit (UNet FLOPs per image / UNet seconds per image /
`--peak-tflops`). The baseline, in the same run, is the model card's snippet (diffusers'
`KandinskyCombinedPipeline` with `enable_model_cpu_offload()`, 768 px) on the same weights; our
images/s are reported as a ratio to it. Targets: >= 3x the snippet at 768 px, >= 50 % of the FLOP-bound
limit at batch 8.

`--dry-run` needs no GPU: it builds every component on the `meta` device and prints parameter counts
and FLOPs per image (`torch.utils.flop_counter`: matmuls, convolutions, attention). `--cpu-smoke` runs
the GPU path's code on the CPU with the tiny model (a check of the script, not a measurement). Without
CUDA (and neither of those) it says so and exits with code 2.

Run: python bench/gpu_throughput.py [--dry-run] [--quick] [--sizes 512,768] [--batches 1,4,8,16]
     [--steps 100,50] [--prior-steps 25] [--compile] [--peak-tflops 989] [--rounds 1] [--no-baseline]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

NEEDS_CUDA_EXIT = 2
SNIPPET_SIZE = 768  # the model card's snippet makes one 768x768 image
SNIPPET_PROMPT = "A alien cheeseburger creature eating itself, claymation, cinematic, moody lighting"
SNIPPET_NEGATIVE = "low quality, bad quality"
TARGET_VS_SNIPPET = 3.0
TARGET_FLOP_FRACTION = 0.5
TARGET_BATCH = 8


def csv_ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dry-run", action="store_true", help="parameter counts and FLOPs on meta, no GPU")
    parser.add_argument("--cpu-smoke", action="store_true", help="run the GPU path on the CPU, tiny model")
    parser.add_argument("--quick", action="store_true", help="768 px, batches 1 and 8, 50 steps, + baseline")
    parser.add_argument("--sizes", type=csv_ints, default=None, help="comma-separated sides (512,768)")
    parser.add_argument("--batches", type=csv_ints, default=None, help="micro-batch sizes (1,4,8,16)")
    parser.add_argument("--steps", type=csv_ints, default=None, help="decoder steps (100,50)")
    parser.add_argument("--prior-steps", type=int, default=25, help="prior steps")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd UNet and MoVQ")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (default: default)")
    parser.add_argument("--rounds", type=int, default=1, help="timed calls per configuration (best kept)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense fp16 peak (H100/H200 SXM)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the model card snippet")
    args = parser.parse_args(argv)
    quick = args.quick
    args.sizes = args.sizes or ([768] if quick else [512, 768])
    args.batches = args.batches or ([1, 8] if quick else [1, 4, 8, 16])
    args.steps = args.steps or ([50] if quick else [100, 50])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(
            f"gpu_throughput: needs CUDA, and torch {torch.__version__} sees no CUDA device here; "
            "nothing was measured (--dry-run counts FLOPs without one).",
            file=sys.stderr,
        )
        return NEEDS_CUDA_EXIT
    from _common import stop_on_sigterm

    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="kb-throughput-") as tmp:
        return Throughput(args, Path(tmp)).run()


# --- FLOPs, on meta tensors -------------------------------------------------------------------


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call (matmul, convolution and attention ops; a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Flops:
    """FLOPs of each part of one text2img image (classifier-free guidance: every batch is 2 per image)."""

    unet_step: dict[int, int]  # side -> one UNet call on 2 latents
    movq_decode: dict[int, int]  # side -> one image
    prior_step: int  # one prior call on 2 embeddings
    prior_text_encoder: int  # CLIP text, prompt and empty prompt
    prior_image_encoder: int  # CLIP vision on the zero image (the default negative embedding), once per call
    text_encoder: int  # MultilingualCLIP, prompt and negative

    def unet(self, side: int, steps: int) -> int:
        return self.unet_step[side] * steps

    def image(self, side: int, steps: int, prior_steps: int) -> int:
        return (
            self.unet(side, steps)
            + self.prior_step * prior_steps
            + self.movq_decode[side]
            + self.prior_text_encoder
            + self.prior_image_encoder
            + self.text_encoder
        )


def meta_flops(sizes: list[int], modules: dict[str, torch.nn.Module] | None = None) -> Flops:
    """Count every part on the meta device: no memory, no weights, a second or two of CPU."""
    import full_size

    meta = torch.device("meta")
    with meta:
        mods = modules or full_size.modules(inpaint=False)
    unet: Any = mods["unet"]
    movq: Any = mods["movq"]
    prior: Any = mods["prior"]
    embed = full_size.config("prior")["embedding_dim"]
    hidden = full_size.config("text_encoder")["hidden_size"]
    clip_width = full_size.config("prior_text_encoder")["hidden_size"]
    image_side = full_size.config("prior_image_encoder")["image_size"]
    tokens = full_size.MAX_TOKENS

    def ids(batch: int) -> torch.Tensor:
        return torch.ones(batch, tokens, dtype=torch.long, device=meta)

    unet_step, movq_decode = {}, {}
    for side in sizes:
        latent = full_size.latent_side(side)
        sample = torch.randn(2, full_size.LATENT_CHANNELS, latent, latent, device=meta)
        unet_step[side] = count_flops(
            partial(
                unet,
                sample=sample,
                timestep=torch.full((2,), 999, device=meta),
                encoder_hidden_states=torch.randn(2, tokens, hidden, device=meta),
                added_cond_kwargs={
                    "text_embeds": torch.randn(2, embed, device=meta),
                    "image_embeds": torch.randn(2, embed, device=meta),
                },
            )
        )
        one = torch.randn(1, full_size.LATENT_CHANNELS, latent, latent, device=meta)
        movq_decode[side] = count_flops(partial(movq.decode, one, force_not_quantize=True))
    prior_step = count_flops(
        lambda: prior(
            torch.randn(2, embed, device=meta),
            timestep=torch.full((2,), 999, device=meta),
            proj_embedding=torch.randn(2, embed, device=meta),
            encoder_hidden_states=torch.randn(2, tokens, clip_width, device=meta),
            attention_mask=torch.ones(2, tokens, dtype=torch.bool, device=meta),
        )
    )
    text = mods["prior_text_encoder"]
    vision = mods["prior_image_encoder"]
    mclip: Any = mods["text_encoder"]
    return Flops(
        unet_step=unet_step,
        movq_decode=movq_decode,
        prior_step=prior_step,
        prior_text_encoder=count_flops(lambda: text(input_ids=ids(2))),
        prior_image_encoder=count_flops(
            lambda: vision(torch.zeros(1, 3, image_side, image_side, device=meta))
        ),
        # MultilingualCLIP is XLM-R plus a linear on the mean-pooled states. XLM-R runs without its
        # all-ones mask here (the mask check reads values, which meta tensors have none of): same FLOPs.
        text_encoder=count_flops(lambda: mclip.transformer(input_ids=ids(2)))
        + count_flops(lambda: mclip.LinearTransformation(torch.randn(2, hidden, device=meta))),
    )


def dry_run(args: argparse.Namespace) -> int:
    """Parameter counts and FLOPs per image of the full-size model, on the meta device."""
    import full_size
    from _common import note, result

    started = time.perf_counter()
    with torch.device("meta"):
        mods = full_size.modules(inpaint=True)
    for name, module in mods.items():
        result(f"{name}_params", full_size.param_count(module), "params")
    sizes = sorted(set(args.sizes) | {512, 768})
    flops = meta_flops(sizes, mods)
    tera = 1e12
    for side in sizes:
        result(f"unet_step_cfg_{side}_tflop", flops.unet_step[side] / tera, "TFLOP")
        result(f"movq_decode_{side}_tflop", flops.movq_decode[side] / tera, "TFLOP")
    result("prior_step_cfg_tflop", flops.prior_step / tera, "TFLOP")
    result("prior_text_encoder_cfg_tflop", flops.prior_text_encoder / tera, "TFLOP")
    result("prior_image_encoder_zero_embed_tflop", flops.prior_image_encoder / tera, "TFLOP")
    result("text_encoder_cfg_tflop", flops.text_encoder / tera, "TFLOP")
    result("prior_steps", args.prior_steps, "steps")
    for side in sizes:
        for steps in sorted(set(args.steps) | {100, 50}, reverse=True):
            result(
                f"image_{side}_{steps}_steps_tflop",
                flops.image(side, steps, args.prior_steps) / tera,
                "TFLOP",
            )
            result(
                f"image_{side}_{steps}_steps_unet_share",
                flops.unet(side, steps) / flops.image(side, steps, args.prior_steps),
                "ratio",
            )
    for side in sizes:
        bound = flops.unet(side, 50) / (args.peak_tflops * tera)
        result(f"unet_{side}_50_steps_flop_bound_s_per_image", bound, "s/image")
    note(
        f"counted on meta in {time.perf_counter() - started:.1f} s (peak for the bound: {args.peak_tflops:g} TFLOP/s)"
    )
    return 0


# --- timing on the device ---------------------------------------------------------------------


class Span:
    """Time spent in one part, summed over start/stop pairs: CUDA events on a GPU (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[Any, Any]] = []
        self._open: Any = None

    def _mark(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._open = self._mark()

    def stop(self) -> None:
        self.marks.append((self._open, self._mark()))

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.marks) / 1000.0
        return float(sum(b - a for a, b in self.marks))

    def reset(self) -> None:
        self.marks = []


class TimedPrior:
    """The prior pipeline, timed whole with a sync on each side (it runs once per micro-batch)."""

    def __init__(self, pipe: Any, span: Span, sync: Callable[[], None]) -> None:
        self._pipe = pipe
        self._span = span
        self._sync = sync

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._sync()
        self._span.start()
        out = self._pipe(*args, **kwargs)
        self._span.stop()
        self._sync()
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)


@dataclass
class Split:
    """Seconds of one timed call, per part."""

    total: float
    prior: float
    unet: float
    movq: float
    png: float

    @property
    def other(self) -> float:
        return max(0.0, self.total - self.prior - self.unet - self.movq - self.png)


class Throughput:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.device = torch.device("cpu" if args.cpu_smoke else "cuda")
        self.spans = {name: Span(self.device) for name in ("prior", "unet", "movq")}
        if args.cpu_smoke:
            args.sizes, args.batches, args.steps = [64], [1, 2], [2]
            args.prior_steps = 2

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def build_models(self) -> dict[str, str]:
        """Random full-size weights (tiny ones for --cpu-smoke), saved and to be loaded back."""
        from _common import note

        started = time.perf_counter()
        root = self.tmp / "models"
        if self.args.cpu_smoke:
            from worker.tiny import make_tiny

            make_tiny(root)
        else:
            from full_size import save_full_size

            save_full_size(root, parts=("prior", "decoder"), device="cuda", dtype=torch.float16)
        note(f"random weights built and saved in {time.perf_counter() - started:.1f} s under {root}")
        return {"prior_model": str(root / "prior"), "decoder_model": str(root / "decoder")}

    def run(self) -> int:
        from _common import bench_settings, machine_note, new_tag, note, result
        from transformers.utils import logging as transformers_logging

        from worker.pipelines import PipelineCache

        transformers_logging.disable_progress_bar()  # a "Loading weights" bar per component is noise here
        machine_note()
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(0)
            note(f"device: {props.name}, {props.total_memory / 2**30:.1f} GiB, torch {torch.__version__}")
        else:
            note("cpu smoke: tiny model on the CPU; the figures below check the script, they measure nothing")
        args = self.args
        models = self.build_models()
        dtype = "float32" if args.cpu_smoke else "float16"
        self.settings = bench_settings(
            new_tag(), device=self.device.type, dtype=dtype, max_side=max(1024, *args.sizes), **models
        )
        spans = self.spans
        sync = self.sync

        class TimedCache(PipelineCache):
            """The worker's cache, handing out a timed prior (generate() calls cache.prior()(...))."""

            def prior(self) -> Any:
                return TimedPrior(super().prior(), spans["prior"], sync)

        cache = TimedCache(self.settings)
        started = time.perf_counter()
        cache.prior()
        decoder = cache.text2img()
        sync()
        result("load_s", time.perf_counter() - started, "s")
        self.hook(decoder)
        flops = self.flops()
        variants = ["eager", "channels_last"] + (["compiled"] if args.compile else [])
        best: dict[tuple[int, int], float] = {}  # (side, steps) -> best images/s
        fraction_at_target: list[float] = []
        for variant in variants:
            self.prepare(decoder, variant)
            for side in args.sizes:
                for steps in args.steps:
                    for batch in args.batches:
                        split = self.time_config(cache, side, steps, batch)
                        tag = f"{variant}_{side}_{steps}steps_b{batch}"
                        rate = batch / split.total
                        result(f"{tag}_images_per_s", rate, "images/s")
                        for part in ("prior", "unet", "movq", "png", "other"):
                            result(f"{tag}_{part}_s_per_image", getattr(split, part) / batch, "s/image")
                        if flops is not None and split.unet > 0:
                            achieved = flops.unet(side, steps) * batch / split.unet / 1e12
                            fraction = achieved / args.peak_tflops
                            result(f"{tag}_unet_tflops_per_s", achieved, "TFLOP/s")
                            result(f"{tag}_flop_bound_fraction", fraction, "ratio")
                            if batch == TARGET_BATCH:
                                fraction_at_target.append(fraction)
                        best[(side, steps)] = max(best.get((side, steps), 0.0), rate)
                        if self.device.type == "cuda":
                            result(f"{tag}_peak_memory_gib", torch.cuda.max_memory_allocated() / 2**30, "GiB")
                            torch.cuda.reset_peak_memory_stats()
        ratios = [] if args.no_baseline else self.baseline(models, best)
        if args.cpu_smoke:
            note("cpu smoke: done; targets are for the full-size model on a GPU and are not judged here")
        else:
            self.verdicts(ratios, fraction_at_target)
        return 0

    # -- pieces of the run -----------------------------------------------------------------------

    def flops(self) -> Flops | None:
        """The UNet's FLOPs per step, counted on meta for the sizes of the grid (full size only)."""
        if self.args.cpu_smoke:
            return None
        return meta_flops(self.args.sizes)

    def hook(self, pipe: Any) -> None:
        """Time every UNet call (forward hooks) and the MoVQ decode (a wrapper on `movq.decode`)."""
        unet_span, movq_span = self.spans["unet"], self.spans["movq"]
        pipe.unet.register_forward_pre_hook(lambda _m, _a: unet_span.start())
        pipe.unet.register_forward_hook(lambda _m, _a, _o: unet_span.stop())
        self._decode = pipe.movq.decode  # what the timer calls; replaced when compiled

        def timed_decode(*a: Any, **kw: Any) -> Any:
            movq_span.start()
            out = self._decode(*a, **kw)
            movq_span.stop()
            return out

        pipe.movq.decode = timed_decode

    def prepare(self, pipe: Any, variant: str) -> None:
        """Put the decoder in the variant's form; variants go eager -> channels_last -> compiled."""
        from _common import note

        if variant == "channels_last":
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.movq.to(memory_format=torch.channels_last)
        elif variant == "compiled":
            mode = self.args.compile_mode
            # One graph per (size, batch) of the grid, up to 8 of them; keep room so none falls back to eager.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
            # Compiling forward in place keeps the module (and its timing hooks, config, dtype) as it is.
            pipe.unet.forward = torch.compile(pipe.unet.forward, mode=mode, dynamic=False)
            self._decode = torch.compile(self._decode, mode=mode, dynamic=False)
        note(f"variant {variant}")

    def items(self, side: int, steps: int, count: int) -> list[Any]:
        from _common import prompts

        from kandinsky_batch.schema import JobSpec
        from worker.generate import Inputs, Item

        specs = [
            JobSpec(
                prompt=text,
                height=side,
                width=side,
                num_inference_steps=steps,
                prior_num_inference_steps=self.args.prior_steps,
                seed=1000 + i,
            )
            for i, text in enumerate(prompts(count))
        ]
        return [Item(f"bench-{i}", 0, spec, Inputs()) for i, spec in enumerate(specs)]

    def time_config(self, cache: Any, side: int, steps: int, batch: int) -> Split:
        """Best of `--rounds` calls of `batch` images (generate + PNG), after a 2-step warm-up call."""
        from worker.generate import generate
        from worker.outputs import encode_image

        def ignore(_step: int, _total: int) -> None:
            return None

        generate(cache, self.items(side, 2, batch), ignore)
        items = self.items(side, steps, batch)
        best: Split | None = None
        for _ in range(max(1, self.args.rounds)):
            for span in self.spans.values():
                span.reset()
            self.sync()
            started = time.perf_counter()
            images = generate(cache, items, ignore)
            self.sync()
            generated = time.perf_counter()
            for item, image in zip(items, images, strict=True):
                encode_image(image, "png", 95, {"prompt": item.spec.prompt, "seed": item.seed})
            ended = time.perf_counter()
            split = Split(
                total=ended - started,
                prior=self.spans["prior"].seconds(),
                unet=self.spans["unet"].seconds(),
                movq=self.spans["movq"].seconds(),
                png=ended - generated,
            )
            if best is None or split.total < best.total:
                best = split
        assert best is not None
        return best

    def baseline(self, models: dict[str, str], best: dict[tuple[int, int], float]) -> list[float]:
        """The model card's snippet on the same weights; returns our best 768-px rate over it, per steps."""
        from _common import note, result
        from diffusers.pipelines.kandinsky.pipeline_kandinsky import KandinskyPipeline
        from diffusers.pipelines.kandinsky.pipeline_kandinsky_combined import KandinskyCombinedPipeline
        from diffusers.pipelines.kandinsky.pipeline_kandinsky_prior import KandinskyPriorPipeline

        side = 64 if self.args.cpu_smoke else SNIPPET_SIZE
        dtype = torch.float32 if self.args.cpu_smoke else torch.float16
        prior = KandinskyPriorPipeline.from_pretrained(models["prior_model"], torch_dtype=dtype)
        decoder = KandinskyPipeline.from_pretrained(models["decoder_model"], torch_dtype=dtype)
        pipe = KandinskyCombinedPipeline(
            **decoder.components, **{f"prior_{name}": module for name, module in prior.components.items()}
        )
        pipe.set_progress_bar_config(disable=True)
        if self.device.type == "cuda":
            pipe.enable_model_cpu_offload()
        else:
            note("baseline: no accelerator, so no model CPU offload")
        ratios = []
        for steps in self.args.steps:

            def snippet(steps: int = steps) -> Any:
                return pipe(
                    prompt=SNIPPET_PROMPT,
                    negative_prompt=SNIPPET_NEGATIVE,
                    prior_guidance_scale=1.0,
                    height=side,
                    width=side,
                    num_inference_steps=steps,
                    prior_num_inference_steps=self.args.prior_steps,
                ).images[0]

            snippet(2)  # warm-up: offload hooks, kernels, allocator
            self.sync()
            started = time.perf_counter()
            snippet()
            self.sync()
            rate = 1.0 / (time.perf_counter() - started)
            result(f"snippet_{side}_{steps}steps_images_per_s", rate, "images/s")
            ours = best.get((side, steps))
            if ours is not None:
                ratio = ours / rate
                ratios.append(ratio)
                result(f"best_{side}_{steps}steps_vs_model_card_snippet", ratio, "x")
        return ratios

    def verdicts(self, ratios: list[float], fractions: list[float]) -> None:
        from _common import note, result

        if ratios:
            met = min(ratios) >= TARGET_VS_SNIPPET
            result("target_vs_snippet_met", int(met), "bool")
            note(
                f"target >= {TARGET_VS_SNIPPET:g}x the model card snippet at 768 px: {'met' if met else 'NOT met'}"
            )
        else:
            note("target vs the model card snippet: not measured (no 768-px configuration or --no-baseline)")
        if fractions:
            met = max(fractions) >= TARGET_FLOP_FRACTION
            result("target_flop_bound_fraction_met", int(met), "bool")
            note(
                f"target >= {TARGET_FLOP_FRACTION:.0%} of the FLOP-bound limit at batch {TARGET_BATCH}: "
                f"{'met' if met else 'NOT met'} (best {max(fractions):.1%})"
            )
        else:
            note(f"target on the FLOP-bound limit: not measured (no batch {TARGET_BATCH}, or --cpu-smoke)")


if __name__ == "__main__":
    raise SystemExit(main())
