"""Every mode (text2img, img2img, inpaint, interpolate) in float16 on CUDA: load time and s/image at batch 1 and 4.

Models come from the settings (`KANDINSKY_BATCH_PRIOR_MODEL`, `_DECODER_MODEL`, `_INPAINT_MODEL`; by default
the Hugging Face hub ids, which must already be in the local cache), or `--tiny` builds the tiny random
model in a temp dir, or `--random-full-size` the full-size architecture with random float16 weights
(`bench/full_size.py`: real shapes and speed, no hub). Each mode runs the worker's own diffusers call
(`worker.generate.generate`) on inputs loaded by `worker.inputs.InputLoader`; every shape is warmed up (with 2 steps) before it is timed.
Load time is what each mode adds when it is first used: text2img loads prior + decoder, img2img and
interpolate reuse them, inpaint loads its own decoder.
`--oom-check` also caps this process's CUDA memory so a big micro-batch runs out of memory, runs it
through `worker.engine.Engine` (status on the Redis of `KANDINSKY_BATCH_REDIS_URL`), and checks that the
engine split the batch and every job still succeeded. Without CUDA it says so and exits with code 2.

Run: python bench/gpu_modes.py [--tiny | --random-full-size] [--size 512|768] [--steps N] [--prior-steps N] [--batch 4] [--oom-check]
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

NEEDS_CUDA_EXIT = 2
MODES = ("text2img", "img2img", "inpaint", "interpolate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--tiny", action="store_true", help="build and use the tiny random model")
    models.add_argument(
        "--random-full-size",
        action="store_true",
        help="build and use the full-size architecture with random weights (no hub)",
    )
    parser.add_argument("--size", type=int, default=512, choices=(512, 768), help="height and width")
    parser.add_argument("--steps", type=int, default=None, help="decoder steps (default: the JobSpec's)")
    parser.add_argument("--prior-steps", type=int, default=None, help="prior steps (default: the JobSpec's)")
    parser.add_argument("--batch", type=int, default=4, help="batch size compared with 1")
    parser.add_argument(
        "--rounds", type=int, default=2, help="timed calls per mode and batch size (best kept)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of the modes")
    parser.add_argument(
        "--oom-check", action="store_true", help="check the engine's split on a real CUDA OOM"
    )
    parser.add_argument(
        "--oom-batch", type=int, default=16, help="micro-batch size that must run out of memory"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(
            f"gpu_modes: needs CUDA, and torch {torch.__version__} sees no CUDA device here; nothing was measured.",
            file=sys.stderr,
        )
        return NEEDS_CUDA_EXIT
    from _common import stop_on_sigterm

    stop_on_sigterm()
    with tempfile.TemporaryDirectory() as tmp:
        return GpuBench(args, Path(tmp)).run()


def png_data_url(size: int, seed: int) -> str:
    """A smooth colour gradient as a PNG `data:` URL (an input image for img2img, inpaint, interpolate)."""
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    corners = torch.rand(3, 2, 2, generator=gen)[None]
    pixels = torch.nn.functional.interpolate(corners, size=(size, size), mode="bilinear", align_corners=True)[
        0
    ]
    image = Image.fromarray((pixels.permute(1, 2, 0) * 255).to(torch.uint8).numpy(), "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class GpuBench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        from _common import bench_settings, new_tag

        from kandinsky_batch.schema import JobSpec

        self.args = args
        self.tmp = tmp
        self.tag = new_tag()
        defaults = JobSpec.model_fields
        self.steps = args.steps or int(defaults["num_inference_steps"].default)
        self.prior_steps = args.prior_steps or int(defaults["prior_num_inference_steps"].default)
        models: dict[str, str] = {}
        if args.tiny:
            from worker.tiny import make_tiny

            root = make_tiny(tmp / "models")
            models = {name: str(root / part) for name, part in self._parts()}
        elif args.random_full_size:
            from full_size import save_full_size

            wanted = {m.strip() for m in args.modes.split(",")}
            parts = ("prior", "decoder", "inpaint") if "inpaint" in wanted else ("prior", "decoder")
            root = save_full_size(tmp / "models", parts=parts, device="cuda", dtype=torch.float16)
            models = {name: str(root / part) for name, part in self._parts() if part in parts}
        self.settings = bench_settings(
            self.tag,
            device="cuda",
            dtype="float16",
            storage_url=(tmp / "store").as_uri(),
            max_side=max(1024, args.size),
            **models,
        )

    @staticmethod
    def _parts() -> list[tuple[str, str]]:
        return [("prior_model", "prior"), ("decoder_model", "decoder"), ("inpaint_model", "inpaint")]

    def spec_data(self, mode: str, image: str) -> dict[str, Any]:
        size = self.args.size
        data: dict[str, Any] = {
            "mode": mode,
            "height": size,
            "width": size,
            "num_inference_steps": self.steps,
            "prior_num_inference_steps": self.prior_steps,
        }
        prompt = "a red fox in the snow, watercolor"
        if mode == "interpolate":
            data["conditions"] = [{"text": prompt, "weight": 0.6}, {"image": image, "weight": 0.4}]
        else:
            data["prompt"] = prompt
        if mode in ("img2img", "inpaint"):
            data["image"] = image
        if mode == "img2img":
            data["strength"] = 0.5
        if mode == "inpaint":
            data["mask"] = [[size // 4, size // 4, 3 * size // 4, 3 * size // 4]]
        return data

    def run(self) -> int:
        from _common import note, result

        from worker.pipelines import PipelineCache

        props = torch.cuda.get_device_properties(0)
        note(f"device: {props.name}, {props.total_memory / 2**30:.1f} GiB, torch {torch.__version__}")
        note(
            f"models: {self.settings.prior_model}, {self.settings.decoder_model}, {self.settings.inpaint_model}"
        )
        note(
            f"{self.args.size}x{self.args.size}, decoder steps {self.steps}, prior steps {self.prior_steps}, float16"
        )
        cache = PipelineCache(self.settings)
        modes = [m.strip() for m in self.args.modes.split(",") if m.strip()]
        for mode in modes:
            if mode not in MODES:
                raise SystemExit(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
            started = time.perf_counter()
            self.load(cache, mode)
            torch.cuda.synchronize()
            result(f"gpu_{mode}_load_s", time.perf_counter() - started, "s")
            per_image = {}
            for size in (1, self.args.batch):
                per_image[size] = self.time_mode(cache, mode, size)
                result(f"gpu_{mode}_batch{size}_s_per_image", per_image[size], "s/image")
            result(
                f"gpu_{mode}_batch{self.args.batch}_vs_batch1", per_image[1] / per_image[self.args.batch], "x"
            )
        result("gpu_peak_memory_gib", torch.cuda.max_memory_allocated() / 2**30, "GiB")
        if self.args.oom_check:
            return self.oom_check(cache)
        return 0

    @staticmethod
    def load(cache: Any, mode: str) -> None:
        """Whatever this mode needs that is not loaded yet (pipelines are shared between modes)."""
        cache.prior()
        if mode == "inpaint":
            cache.inpaint()
        elif mode == "img2img":
            cache.img2img()
        else:
            cache.text2img()

    def items(self, mode: str, count: int, steps: int) -> list[Any]:
        from kandinsky_batch.schema import JobSpec
        from kandinsky_batch.storage.file import FileStorage
        from worker.generate import Item
        from worker.inputs import InputLoader

        loader = InputLoader(self.settings, FileStorage(self.tmp / "store"))
        out = []
        for i in range(count):
            data = self.spec_data(mode, png_data_url(self.args.size, seed=i))
            spec = JobSpec(**{**data, "num_inference_steps": steps, "seed": 100 + i})
            out.append(Item(f"gpu-{i}", 0, spec, loader.load(spec)))
        return out

    def time_mode(self, cache: Any, mode: str, size: int) -> float:
        """Best seconds per image over `--rounds` calls of `size` images, after a 2-step warm-up."""
        from worker.generate import generate

        def ignore(_step: int, _total: int) -> None:
            return None

        generate(cache, self.items(mode, size, steps=2), ignore)
        items = self.items(mode, size, steps=self.steps)
        best = float("inf")
        for _ in range(self.args.rounds):
            torch.cuda.synchronize()
            started = time.perf_counter()
            images = generate(cache, items, ignore)
            torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - started) / size)
            assert len(images) == size
        return best

    def oom_check(self, cache: Any) -> int:
        """Cap CUDA memory so `--oom-batch` images cannot fit, then run them through the Engine."""
        import redis
        from _common import REDIS_URL, cleanup, note, result

        from kandinsky_batch.keys import JobRef, Keys
        from kandinsky_batch.schema import JobSpec, JobState
        from kandinsky_batch.storage.file import FileStorage
        from kandinsky_batch.store.status import StatusStore
        from worker.engine import Engine
        from worker.generate import generate
        from worker.jobs import Job
        from worker.splitting import is_oom

        settings = self.settings.model_copy(update={"max_batch_size": self.args.oom_batch})
        client = redis.Redis.from_url(REDIS_URL)
        status = StatusStore(client, Keys(self.tag), ttl_s=3600)
        calls: list[tuple[int, str]] = []

        def recording(cache_: Any, items: list[Any], on_step: Any) -> Any:
            try:
                images = generate(cache_, items, on_step)
            except Exception as exc:
                calls.append((len(items), "oom" if is_oom(exc) else type(exc).__name__))
                raise
            calls.append((len(items), "ok"))
            return images

        engine = Engine(settings, cache, FileStorage(self.tmp / "store"), status, "gpu-bench", recording)
        # What one image needs on top of the weights, measured, sets a cap that fits about three.
        torch.cuda.empty_cache()
        weights = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        generate(cache, self.items("text2img", 1, steps=2), lambda _s, _t: None)
        one_image = torch.cuda.max_memory_allocated() - weights
        cap = weights + 3 * one_image
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        note(
            f"oom check: weights {weights / 2**30:.2f} GiB, one image +{one_image / 2**30:.2f} GiB, cap {cap / 2**30:.2f} GiB"
        )
        batch = "oom"
        data = self.spec_data("text2img", "")
        jobs = [
            Job(JobRef(batch, i), JobSpec(**{**data, "num_inference_steps": 2, "seed": i}))
            for i in range(self.args.oom_batch)
        ]
        try:
            status.create_jobs(batch, [(job.index, job.spec.seed or 0) for job in jobs])
            engine.run(jobs)
            counts = status.batch(batch).counts
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0)
            cleanup(client, self.tag)
        note(f"oom check: generate calls (images, outcome): {calls}")
        split = bool(calls) and calls[0] == (self.args.oom_batch, "oom") and len(calls) > 1
        handled = split and counts[JobState.SUCCEEDED] == len(jobs)
        result("gpu_oom_first_call_images", calls[0][0] if calls else 0, "images")
        result("gpu_oom_generate_calls", len(calls), "calls")
        result("gpu_oom_jobs_succeeded", counts[JobState.SUCCEEDED], "jobs")
        result("gpu_oom_split_handled", int(handled), "bool")
        if not handled:
            note(f"oom check FAILED: counts {dict(counts)}")
            return 1
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
