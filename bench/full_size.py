"""The full-size Kandinsky 2.1 architecture with random weights, from the configs in `bench/kandinsky21/`.

Benchmarks of the real model need its real shapes, not its trained weights: this builds every component
(prior, both CLIP encoders, the multilingual text encoder, decoder and inpaint UNets, MoVQ) from the
published configs, so throughput and FLOPs can be measured without a download. On the `meta` device
nothing is allocated (parameter and FLOP counts on a CPU); on CUDA `save_full_size` writes folders that
load through `from_pretrained` exactly like the hub checkpoints. Tokenizers are stand-ins (the vocab
files are not in the configs); both pad to 77 tokens like the real ones, so the compute is the same.
See `bench/kandinsky21/SOURCES.md` for where each config comes from.

Not a benchmark itself: `bench/gpu_throughput.py` and `bench/gpu_modes.py --random-full-size` use it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

# Deep imports on purpose: under mypy, `from diffusers import X` resolves to diffusers' dummy objects.
from diffusers.models.autoencoders.vq_model import VQModel
from diffusers.models.transformers.prior_transformer import PriorTransformer
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.kandinsky.pipeline_kandinsky import KandinskyPipeline
from diffusers.pipelines.kandinsky.pipeline_kandinsky_inpaint import KandinskyInpaintPipeline
from diffusers.pipelines.kandinsky.pipeline_kandinsky_prior import KandinskyPriorPipeline
from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP
from diffusers.schedulers import DDIMScheduler, UnCLIPScheduler
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    XLMRobertaTokenizer,
)

from worker import tiny

CONFIG_DIR = Path(__file__).resolve().parent / "kandinsky21"
PARTS = ("prior", "decoder", "inpaint")
MAX_TOKENS = 77  # both pipelines pad prompts to 77 tokens
LATENT_CHANNELS = 4
MOVQ_FACTOR = 8  # 2 ** (len(movq block_out_channels) - 1)


def config(name: str) -> dict[str, Any]:
    """One published config (`bench/kandinsky21/<name>.json`) without its `_`-prefixed bookkeeping keys."""
    data = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    return {key: value for key, value in data.items() if not key.startswith("_")}


def latent_side(pixels: int) -> int:
    """What `diffusers.pipelines.kandinsky.pipeline_kandinsky.get_new_h_w` gives: 512 -> 64, 768 -> 96."""
    blocks = -(-pixels // MOVQ_FACTOR**2)
    return blocks * MOVQ_FACTOR


def clip_tokenizer() -> CLIPTokenizer:
    """A stand-in for the prior's CLIP BPE tokenizer (49408 tokens); ids fit inside the real vocab."""
    return tiny._clip_tokenizer()


def mclip_tokenizer() -> XLMRobertaTokenizer:
    """A stand-in for the decoder's XLM-R SentencePiece tokenizer (250002 tokens)."""
    return tiny._mclip_tokenizer()


def prior_transformer() -> PriorTransformer:
    model = PriorTransformer(**config("prior"))
    # clip_std starts at zero, and post_process_latents would then return all-zero image embeddings.
    with torch.no_grad():
        model.clip_std.fill_(1.0)
    return model.eval()


def prior_text_encoder(tokenizer: CLIPTokenizer | None = None) -> CLIPTextModelWithProjection:
    values = config("prior_text_encoder")
    if tokenizer is not None:
        # The pooled output is read at the first eos token, so the ids must be this tokenizer's.
        values.update(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return CLIPTextModelWithProjection(CLIPTextConfig(**values)).eval()


def prior_image_encoder() -> CLIPVisionModelWithProjection:
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**config("prior_image_encoder"))).eval()


def text_encoder() -> MultilingualCLIP:
    """XLM-RoBERTa-large plus the linear 1024 -> 768 that MultilingualCLIP puts on its mean-pooled output."""
    values = config("text_encoder")
    values.pop("model_type", None)
    return MultilingualCLIP(MCLIPConfig(**values)).eval()


def unet(inpaint: bool = False) -> UNet2DConditionModel:
    return UNet2DConditionModel(**config("inpaint_unet" if inpaint else "unet")).eval()


def movq() -> VQModel:
    return VQModel(**config("movq")).eval()


def prior_scheduler() -> UnCLIPScheduler:
    return UnCLIPScheduler(**config("prior_scheduler"))


def ddim() -> DDIMScheduler:
    return DDIMScheduler(**config("scheduler"))


def image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(**config("prior_image_processor"))


def modules(inpaint: bool = True) -> dict[str, torch.nn.Module]:
    """Every weight-bearing component, built on the current default device (use `torch.device("meta")`)."""
    out: dict[str, torch.nn.Module] = {
        "prior": prior_transformer(),
        "prior_text_encoder": prior_text_encoder(clip_tokenizer()),
        "prior_image_encoder": prior_image_encoder(),
        "text_encoder": text_encoder(),
        "unet": unet(),
        "movq": movq(),
    }
    if inpaint:
        out["inpaint_unet"] = unet(inpaint=True)
    return out


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prior_pipeline() -> KandinskyPriorPipeline:
    tokenizer = clip_tokenizer()
    return KandinskyPriorPipeline(
        prior=prior_transformer(),
        image_encoder=prior_image_encoder(),
        text_encoder=prior_text_encoder(tokenizer),
        tokenizer=tokenizer,
        scheduler=prior_scheduler(),
        image_processor=image_processor(),
    )


def decoder_pipeline() -> KandinskyPipeline:
    return KandinskyPipeline(
        text_encoder=text_encoder(), tokenizer=mclip_tokenizer(), unet=unet(), scheduler=ddim(), movq=movq()
    )


def inpaint_pipeline() -> KandinskyInpaintPipeline:
    return KandinskyInpaintPipeline(
        text_encoder=text_encoder(),
        tokenizer=mclip_tokenizer(),
        unet=unet(inpaint=True),
        scheduler=ddim(),
        movq=movq(),
    )


_BUILDERS = {"prior": prior_pipeline, "decoder": decoder_pipeline, "inpaint": inpaint_pipeline}


def save_full_size(
    root: Path,
    parts: tuple[str, ...] = PARTS,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> Path:
    """Write `root/<part>` for each of `parts` (prior, decoder, inpaint) with random weights in `dtype`.

    Weights are initialised on `device` (a GPU does it in seconds; the CPU takes minutes and ~14 GB of
    RAM in float32), one part at a time so only one is ever held. The folders load with
    `from_pretrained` like `kandinsky-community/kandinsky-2-1-prior`, `-2-1` and `-2-1-inpaint`.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        for part in parts:
            torch.manual_seed(seed)
            staging = Path(tempfile.mkdtemp(prefix=f".{part}.building-", dir=root))
            try:
                with torch.device(device):
                    pipe = _BUILDERS[part]()
                pipe.to(dtype=dtype)
                pipe.save_pretrained(staging)
                del pipe
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                shutil.rmtree(root / part, ignore_errors=True)
                staging.rename(root / part)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return root
