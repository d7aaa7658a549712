"""One PipelineCache per worker process: weights load once and are shared across modes.

text2img, img2img and interpolate use one prior and one decoder (img2img is made
with `from_pipe` from the decoder's components, so no weight is copied); inpaint adds only its
own decoder. Loads are counted so tests can prove nothing loads twice.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, OrderedDict
from typing import Any

import torch
from diffusers import (
    KandinskyImg2ImgPipeline,
    KandinskyInpaintPipeline,
    KandinskyPipeline,
    KandinskyPriorPipeline,
)
from diffusers.utils import logging as diffusers_logging

from kandinsky_batch.schema import Mode
from kandinsky_batch.settings import Settings
from worker import metrics

log = logging.getLogger(__name__)
diffusers_logging.disable_progress_bar()  # one bar per load is noise in a worker's log

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


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
        self.loads: Counter[str] = Counter()
        # diffusers pipelines are untyped where we use them (components, __call__).
        self._prior: Any = None
        self._img2img: Any = None
        self._decoders: OrderedDict[str, Any] = OrderedDict()  # least recently used first

    def _load(self, name: str, cls: Any, source: str) -> Any:
        log.info("loading %s from %s (%s, %s)", name, source, self.device, self.dtype)
        pipe = cls.from_pretrained(source, torch_dtype=self.dtype)
        if self.settings.cpu_offload and self.device.type == "cuda":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.loads[name] += 1
        metrics.PIPELINE_LOADS.labels(name).inc()
        return pipe

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

    def warm(self, modes: list[Mode]) -> None:
        """Load everything the served modes need, before the worker reports ready."""
        self.prior()
        if {Mode.TEXT2IMG, Mode.IMG2IMG, Mode.INTERPOLATE} & set(modes):
            self.text2img()
        if Mode.IMG2IMG in modes:
            self.img2img()
        if Mode.INPAINT in modes:
            self.inpaint()

    def models(self, mode: Mode) -> dict[str, dict[str, str | None]]:
        """Ids and revisions of the models a mode uses, for the metadata beside each image."""
        decoder = "inpaint" if mode is Mode.INPAINT else "decoder"
        out: dict[str, dict[str, str | None]] = {}
        for name, pipe in (("prior", self._prior), (decoder, self._decoders.get(decoder))):
            path = str(pipe.config.get("_name_or_path", "")) if pipe is not None else ""
            source = getattr(self.settings, f"{name}_model")
            out[name] = {"id": source, "revision": model_revision(path)}
        return out
