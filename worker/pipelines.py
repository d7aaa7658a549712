"""One PipelineCache per worker process: weights load once and are shared across modes.

text2img, img2img and interpolate use one prior and one decoder (img2img is made
with `from_pipe` from the decoder's components, so no weight is copied); inpaint adds only its
own decoder. Loads are counted so tests can prove nothing loads twice. The GPU options
(worker/acceleration.py) are applied at each load, and a compiled decoder is compiled for every
batch bucket by `warm`, before the worker reports ready.

A model setting that names no model is `ModelUnavailable`, one line naming the variable and its
value: a missing folder is found before anything loads, a hub id that cannot be fetched at its load.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import torch
from diffusers import (
    KandinskyImg2ImgPipeline,
    KandinskyInpaintPipeline,
    KandinskyPipeline,
    KandinskyPriorPipeline,
)
from diffusers.utils import logging as diffusers_logging
from huggingface_hub import try_to_load_from_cache
from PIL import Image

from kandinsky_batch.errors import ModelUnavailable
from kandinsky_batch.schema import JobSpec, Mode
from kandinsky_batch.settings import Settings
from worker import acceleration, metrics

log = logging.getLogger(__name__)
diffusers_logging.disable_progress_bar()  # one bar per load is noise in a worker's log

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A Hugging Face hub id (`org/name` or `name`); anything else that is not a folder is a wrong path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_INSTEAD = (
    " (set a local diffusers folder instead: "
    "`kandinsky-batch models make-tiny DIR` writes small random-weight ones to try things out)"
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def model_setting(name: str) -> str:
    """The variable that names the model of pipeline `name` (prior, decoder, inpaint)."""
    return f"KANDINSKY_BATCH_{name.upper()}_MODEL"


def source_problem(name: str, source: str) -> str | None:
    """Why `source` cannot be pipeline `name`'s model, where that shows without loading anything."""
    where = f"{model_setting(name)}={source}"
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            return f"{where}: not a diffusers pipeline folder (it has no model_index.json)"
        return None
    if path.exists():
        return f"{where}: a file, not a folder (a local diffusers folder or a Hugging Face id)"
    if not _HUB_ID.match(source):
        return f"{where}: no such folder (a local diffusers folder or a Hugging Face id)"
    if (
        huggingface_hub.constants.HF_HUB_OFFLINE
        and try_to_load_from_cache(source, "model_index.json") is None
    ):
        return f"{where}: HF_HUB_OFFLINE is set and this Hugging Face id is not in the local cache"
    return None


def load_problem(name: str, source: str, error: Exception) -> str:
    """One line for a model that failed to load: a folder's own error, or why a hub id was not fetched."""
    where = f"{model_setting(name)}={source}"
    if Path(source).expanduser().is_dir():
        reason = " ".join(str(error).split())[:300]
        return f"{where}: not a loadable model folder ({type(error).__name__}: {reason})"
    why = (
        "HF_HUB_OFFLINE is set and it is not in the local cache"
        if huggingface_hub.constants.HF_HUB_OFFLINE
        else "the Hugging Face hub is unreachable or has no such model, and it is not in the local cache"
    )
    return f"{where}: cannot load this Hugging Face id: {why}{_INSTEAD}"


def model_revision(path: str) -> str | None:
    """The hub commit a model was loaded from (`.../snapshots/<sha>`), if any."""
    match = re.search(r"snapshots/([0-9a-f]{40})", path)
    return match.group(1) if match else None


class PipelineCache:
    """Lazily loaded, shared Kandinsky pipelines for one device and dtype."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.channels_last = acceleration.resolve_channels_last(settings.channels_last, self.device)
        self.tf32 = acceleration.apply_tf32(settings.tf32, self.device)  # None: flags left as they were
        self.loads: Counter[str] = Counter()
        # What the compile warm-up ran: decoder name -> batch sizes, and how long it took in all.
        self.compiled_buckets: dict[str, list[int]] = {}
        self.compile_seconds = 0.0
        # diffusers pipelines are untyped where we use them (components, __call__).
        self._prior: Any = None
        self._img2img: Any = None
        self._decoders: OrderedDict[str, Any] = OrderedDict()  # least recently used first

    def _load(self, name: str, cls: Any, source: str) -> Any:
        log.info("loading %s from %s (%s, %s)", name, source, self.device, self.dtype)
        try:
            pipe = cls.from_pretrained(source, torch_dtype=self.dtype)
        except (OSError, ValueError) as exc:  # what diffusers and the hub raise for a model they cannot read
            log.debug("loading %s from %s failed", name, source, exc_info=exc)
            raise ModelUnavailable(load_problem(name, source, exc)) from exc
        self._accelerate(name, pipe)
        if self.settings.cpu_offload and self.device.type == "cuda":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.loads[name] += 1
        metrics.PIPELINE_LOADS.labels(name).inc()
        return pipe

    def _accelerate(self, name: str, pipe: Any) -> None:
        """SDPA attention always; channels_last and torch.compile (decoders only) as set."""
        for part, module in pipe.components.items():
            if isinstance(module, torch.nn.Module) and acceleration.ensure_sdpa(module):
                log.info("%s.%s: eager attention processors switched to SDPA", name, part)
        nhwc = acceleration.use_channels_last(pipe) if self.channels_last else []
        compiled = (
            []
            if name == "prior"
            else acceleration.compile_pipeline(pipe, self.settings.compile, self.settings.compile_backend)
        )
        log.info(
            "%s: attention %s, channels_last %s, compiled %s",
            name,
            self._processors(name, pipe),
            nhwc or "none",
            compiled or "nothing",
        )

    @staticmethod
    def _processors(name: str, pipe: Any) -> dict[str, list[str]]:
        found = {}
        for part, module in pipe.components.items():
            if isinstance(module, torch.nn.Module) and (names := acceleration.processor_names(module)):
                found[f"{name}.{part}"] = names
        return found

    def attention_processors(self) -> dict[str, list[str]]:
        """Attention processor class names per loaded `pipeline.component` (SDPA ones end in `2_0`)."""
        found: dict[str, list[str]] = {}
        if self._prior is not None:
            found.update(self._processors("prior", self._prior))
        for name, pipe in self._decoders.items():
            found.update(self._processors(name, pipe))
        return found

    @property
    def decode_in_store(self) -> bool:
        """Whether MoVQ decoding moves to the storing thread (worker/generate.py, `Undecoded`).

        `auto`: on the CPU, where it runs on a core the denoising does not use. Never with CPU
        offload (its hooks run at the end of the pipeline call) or a compiled MoVQ.
        """
        choice = self.settings.decode_in_store
        if choice == "off" or self.settings.compile == "all" or self.settings.cpu_offload:
            return False
        return choice == "on" or self.device.type == "cpu"

    def batch_size_for(self, n: int) -> int:
        """How many images a micro-batch of `n` runs as: its bucket when compiled, else `n`."""
        if self.settings.compile == "none":
            return n
        return acceleration.bucket_for(n, self.settings.max_batch_size)

    def prior(self) -> Any:
        if self._prior is None:
            self._prior = self._load("prior", KandinskyPriorPipeline, self.settings.prior_model)
        return self._prior

    def _decoder(self, name: str) -> Any:
        """A decoder, loaded on first need; others are evicted (LRU) to stay in the budget."""
        if name in self._decoders:
            self._decoders.move_to_end(name)
            return self._decoders[name]
        cls, source = {
            "decoder": (KandinskyPipeline, self.settings.decoder_model),
            "inpaint": (KandinskyInpaintPipeline, self.settings.inpaint_model),
        }[name]
        pipe = self._load(name, cls, source)
        self._decoders[name] = pipe
        self._evict_over_budget()
        return pipe

    def _evict_over_budget(self) -> None:
        budget = self.settings.memory_budget_mb * 2**20
        while budget and len(self._decoders) > 1 and self.resident_bytes() > budget:
            name, _ = self._decoders.popitem(last=False)
            if name == "decoder":
                self._img2img = None
            log.info("evicted %s to stay within %d MiB", name, self.settings.memory_budget_mb)
            free = getattr(torch, self.device.type, None)
            if free is not None and hasattr(free, "empty_cache"):
                free.empty_cache()

    def resident_bytes(self) -> int:
        """Bytes of weights held by the loaded pipelines (shared modules counted once)."""
        seen: set[int] = set()
        total = 0
        for pipe in [self._prior, *self._decoders.values()]:
            for module in pipe.components.values() if pipe is not None else ():
                if isinstance(module, torch.nn.Module):
                    for param in module.parameters():
                        if id(param) not in seen:
                            seen.add(id(param))
                            total += param.numel() * param.element_size()
        return total

    def text2img(self) -> Any:
        return self._decoder("decoder")

    def img2img(self) -> Any:
        decoder = self.text2img()
        if self._img2img is None:
            # diffusers' from_pipe reuses text2img's modules: a view, not a second copy of the weights.
            self._img2img = KandinskyImg2ImgPipeline.from_pipe(decoder)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def inpaint(self) -> Any:
        return self._decoder("inpaint")

    def warm(self, modes: list[Mode], size: tuple[int, int] | None = None) -> None:
        """Load everything the served modes need, and compile it if set, before the worker is ready.

        `size` (height, width) is what compiled decoders are warmed at: the job spec's default
        unless given; other sizes compile on their first micro-batch.
        """
        self.check_sources(modes)
        self.prior()
        if {Mode.TEXT2IMG, Mode.IMG2IMG, Mode.INTERPOLATE} & set(modes):
            self.text2img()
        if Mode.IMG2IMG in modes:
            self.img2img()
        if Mode.INPAINT in modes:
            self.inpaint()
        if self.settings.compile != "none":
            fields = JobSpec.model_fields
            self.warm_compiled(modes, size or (fields["height"].default, fields["width"].default))

    def check_sources(self, modes: list[Mode]) -> None:
        """Every wrong model path of the served modes at once, before a slow load of the others."""
        names = ["prior"]
        if {Mode.TEXT2IMG, Mode.IMG2IMG, Mode.INTERPOLATE} & set(modes):
            names.append("decoder")
        if Mode.INPAINT in modes:
            names.append("inpaint")
        found, hub = [], False
        for name in names:
            source = str(getattr(self.settings, f"{name}_model"))
            if problem := source_problem(name, source):
                found.append(problem)
                hub = hub or (bool(_HUB_ID.match(source)) and not Path(source).expanduser().exists())
        if found:  # the hint once, after the hub ids that cannot be loaded
            raise ModelUnavailable("; ".join(found) + (_INSTEAD if hub else ""))

    def warm_compiled(self, modes: list[Mode], size: tuple[int, int]) -> None:
        """One tiny call per batch bucket of each served, loaded decoder, so every compile happens here.

        One decoder step at the spec's default guidance scale (the UNet sees the 2N latents of
        classifier-free guidance, as jobs do), with embeddings from one two-step prior call.
        img2img runs text2img's compiled modules on latents of the same shape: no call of its own.
        """
        names = []
        if {Mode.TEXT2IMG, Mode.IMG2IMG, Mode.INTERPOLATE} & set(modes):
            names.append("decoder")
        if Mode.INPAINT in modes:
            names.append("inpaint")
        height, width = size
        seed = torch.Generator("cpu").manual_seed(0)
        embeds = self.prior()(prompt=[""], num_inference_steps=2, generator=seed)  # UnCLIP needs 2
        buckets = acceleration.batch_buckets(self.settings.max_batch_size)
        for name in names:
            pipe = self._decoders.get(name)
            if pipe is None:  # evicted to stay in the memory budget: it compiles on first use
                continue
            started = time.perf_counter()
            for n in buckets:
                inputs: dict[str, Any] = {}
                if name == "inpaint":
                    inputs = {
                        "image": [Image.new("RGB", (width, height))] * n,
                        "mask_image": [Image.new("L", (width, height), 255)] * n,
                    }
                pipe(
                    prompt=[""] * n,
                    image_embeds=embeds.image_embeds.repeat(n, 1),
                    negative_image_embeds=embeds.negative_image_embeds.repeat(n, 1),
                    height=height,
                    width=width,
                    num_inference_steps=1,
                    guidance_scale=JobSpec.model_fields["guidance_scale"].default,
                    output_type="pt",
                    **inputs,
                )
            seconds = time.perf_counter() - started
            self.compiled_buckets[name] = buckets
            self.compile_seconds += seconds
            log.info(
                "compiled %s (%s) for batches %s at %dx%d in %.1f s",
                name,
                self.settings.compile,
                buckets,
                height,
                width,
                seconds,
            )

    def models(self, mode: Mode) -> dict[str, dict[str, str | None]]:
        """Ids and revisions of the models a mode uses, for the metadata beside each image."""
        decoder = "inpaint" if mode is Mode.INPAINT else "decoder"
        out: dict[str, dict[str, str | None]] = {}
        for name, pipe in (("prior", self._prior), (decoder, self._decoders.get(decoder))):
            path = str(pipe.config.get("_name_or_path", "")) if pipe is not None else ""
            source = getattr(self.settings, f"{name}_model")
            out[name] = {"id": source, "revision": model_revision(path)}
        return out
