"""One PipelineCache per worker process: weights load once and are shared across modes.

text2img, img2img and interpolate use one prior and one decoder (img2img is built
from the decoder's components, so no weight is copied); inpaint adds only its
own decoder. Loads are counted so tests can prove nothing loads twice.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

import torch
from diffusers import (
    KandinskyImg2ImgPipeline,
    KandinskyInpaintPipeline,
    KandinskyPipeline,
    KandinskyPriorPipeline,
)

from producer.schema import Mode
from producer.settings import Settings

log = logging.getLogger(__name__)

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
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        self.loads: Counter[str] = Counter()
        self._prior: Any = None
        # diffusers pipelines are untyped where we use them (components, __call__).
        self._decoder: Any = None
        self._img2img: Any = None
        self._inpaint: Any = None

    def _load(self, name: str, cls: Any, source: str) -> Any:
        log.info("loading %s from %s (%s, %s)", name, source, self.device, self.dtype)
        pipe = cls.from_pretrained(source, torch_dtype=self.dtype)
        if self.settings.cpu_offload and self.device.type == "cuda":
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.loads[name] += 1
        return pipe

    def prior(self) -> Any:
        if self._prior is None:
            self._prior = self._load("prior", KandinskyPriorPipeline, self.settings.prior_model)
        return self._prior

    def text2img(self) -> Any:
        if self._decoder is None:
            self._decoder = self._load("decoder", KandinskyPipeline, self.settings.decoder_model)
        return self._decoder

    def img2img(self) -> Any:
        if self._img2img is None:
            # Same modules as text2img: a view, not a second copy of the weights.
            self._img2img = KandinskyImg2ImgPipeline(**self.text2img().components)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def inpaint(self) -> Any:
        if self._inpaint is None:
            self._inpaint = self._load("inpaint", KandinskyInpaintPipeline, self.settings.inpaint_model)
        return self._inpaint

    def warm(self, modes: list[Mode]) -> None:
        """Load everything the served modes need, before the worker reports ready."""
        self.prior()
        if {Mode.TEXT2IMG, Mode.IMG2IMG, Mode.INTERPOLATE} & set(modes):
            self.text2img()
        if Mode.IMG2IMG in modes:
            self.img2img()
        if Mode.INPAINT in modes:
            self.inpaint()

    def models(self) -> dict[str, dict[str, str | None]]:
        """Model ids and revisions, for the metadata stored beside each image."""
        out: dict[str, dict[str, str | None]] = {}
        loaded: list[tuple[str, Any]] = [
            ("prior", self._prior),
            ("decoder", self._decoder),
            ("inpaint", self._inpaint),
        ]
        for name, pipe in loaded:
            if pipe is not None:
                path = str(pipe.config.get("_name_or_path", ""))
                source = getattr(self.settings, f"{name}_model")
                out[name] = {"id": source, "revision": model_revision(path)}
        return out
