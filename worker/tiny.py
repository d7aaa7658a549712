"""Tiny random-weight Kandinsky 2.1 checkpoints, built offline, for tests and the demo.

The three folders load through the same `from_pretrained` path as the Hub checkpoints
(kandinsky-2-1-prior, kandinsky-2-1, kandinsky-2-1-inpaint), so the code under test cannot tell it
got a toy. Component sizes follow diffusers' own fast tests for the Kandinsky pipelines.
"""

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

# Deep imports on purpose: under mypy, `from diffusers import X` resolves to diffusers' dummy objects.
from diffusers.models.autoencoders.vq_model import VQModel
from diffusers.models.transformers.prior_transformer import PriorTransformer
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.kandinsky.pipeline_kandinsky import KandinskyPipeline
from diffusers.pipelines.kandinsky.pipeline_kandinsky_inpaint import KandinskyInpaintPipeline
from diffusers.pipelines.kandinsky.pipeline_kandinsky_prior import KandinskyPriorPipeline
from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP
from diffusers.schedulers import DDIMScheduler, UnCLIPScheduler  # the names the pipelines annotate with
from tokenizers import pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    XLMRobertaTokenizer,
)
from transformers.utils import logging as transformers_logging

COMPLETE_MARKER = ".complete"
PARTS = ("prior", "decoder", "inpaint")

HIDDEN = 32  # width of text and image embeddings: prior, both text encoders, UNet cross-attention
CLIP_VOCAB_SIZE = 1000
MCLIP_VOCAB_SIZE = 1005
MAX_TOKENS = 77

_LETTERS = "etaoinshrdlcumwfgypbvkjxqz"  # by English frequency, so the first merges are the useful ones
_CYRILLIC = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"

T = TypeVar("T")


def is_tiny_complete(root: pathlib.Path) -> bool:
    """True only for a finished `make_tiny` build: the marker goes in after every folder."""
    root = pathlib.Path(root)
    parts_there = all((root / part / "model_index.json").is_file() for part in PARTS)
    return parts_there and (root / COMPLETE_MARKER).is_file()


def make_tiny(root: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Write `root/prior`, `root/decoder` and `root/inpaint`; the same seed gives the same weights.

    Builds in a hidden sibling folder and renames it to `root`, so a crash never leaves a folder
    that `is_tiny_complete` accepts. An existing `root` is replaced. Returns `root`.
    """
    root = pathlib.Path(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a model folder is meant to be read by others
        # fork_rng: seeding per component must not reset the caller's global torch RNG.
        with _quiet_progress_bars(), torch.random.fork_rng(devices=[]):
            _prior(seed).save_pretrained(staging / "prior")
            _decoder(seed).save_pretrained(staging / "decoder")
            _inpaint(seed).save_pretrained(staging / "inpaint")
        (staging / COMPLETE_MARKER).write_text(f"seed={seed}\n")
        _swap_into_place(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _swap_into_place(staging: pathlib.Path, root: pathlib.Path) -> None:
    """Rename `staging` to `root`; an old `root` is renamed out of the way first, then deleted."""
    if not root.exists():
        os.replace(staging, root)
        return
    old = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    os.replace(root, old / root.name)
    os.replace(staging, root)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' "Writing model shards" bars for files this small; restore the setting after."""
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def _seeded(seed: int, build: Callable[[], T]) -> T:
    """Reseed before each component, so no component's weights depend on what was built before it."""
    torch.manual_seed(seed)
    return build()


def _prior(seed: int) -> KandinskyPriorPipeline:
    tokenizer = _clip_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        max_position_embeddings=MAX_TOKENS,
        hidden_size=HIDDEN,
        projection_dim=HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        # The pooled output is read at the first eos token, so the ids must be this tokenizer's.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=HIDDEN,
        projection_dim=HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        num_channels=3,
        image_size=224,
        patch_size=14,
    )
    return KandinskyPriorPipeline(
        prior=_seeded(seed, _prior_transformer),
        image_encoder=_seeded(seed, lambda: CLIPVisionModelWithProjection(vision_config).eval()),
        text_encoder=_seeded(seed, lambda: CLIPTextModelWithProjection(text_config).eval()),
        tokenizer=tokenizer,
        scheduler=UnCLIPScheduler(
            variance_type="fixed_small_log",
            prediction_type="sample",
            num_train_timesteps=1000,
            clip_sample=True,
            clip_sample_range=10.0,
        ),
        # Without torchvision (we do not install it) transformers hands out CLIPImageProcessorPil here.
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 224},
            crop_size={"height": 224, "width": 224},
            do_resize=True,
            do_center_crop=True,
            do_normalize=True,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
            resample=3,
        ),
    )


def _prior_transformer() -> PriorTransformer:
    model = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=HIDDEN, num_layers=1)
    # clip_std starts at zero, and post_process_latents would then return all-zero image embeddings.
    with torch.no_grad():
        model.clip_std.fill_(1.0)
    return model


def _decoder(seed: int) -> KandinskyPipeline:
    return KandinskyPipeline(
        text_encoder=_seeded(seed, _mclip),
        tokenizer=_mclip_tokenizer(),
        unet=_seeded(seed, lambda: _unet(in_channels=4)),
        scheduler=_ddim(),
        movq=_seeded(seed, _movq),
    )


def _inpaint(seed: int) -> KandinskyInpaintPipeline:
    """Like the decoder, but the UNet also takes the masked image latents (4) and the mask (1)."""
    return KandinskyInpaintPipeline(
        text_encoder=_seeded(seed, _mclip),
        tokenizer=_mclip_tokenizer(),
        unet=_seeded(seed, lambda: _unet(in_channels=9)),
        scheduler=_ddim(),
        movq=_seeded(seed, _movq),
    )


def _mclip() -> MultilingualCLIP:
    config = MCLIPConfig(
        numDims=HIDDEN,
        transformerDimensions=HIDDEN,
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=MCLIP_VOCAB_SIZE,
    )
    return MultilingualCLIP(config).eval()


def _unet(in_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        in_channels=in_channels,
        out_channels=8,  # 4 latent channels of noise and 4 of learned variance
        addition_embed_type="text_image",
        encoder_hid_dim_type="text_image_proj",
        encoder_hid_dim=HIDDEN,
        cross_attention_dim=HIDDEN,
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        class_embed_type=None,
    )


def _movq() -> VQModel:
    return VQModel(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        latent_channels=4,
        vq_embed_dim=4,
        num_vq_embeddings=12,
        norm_type="spatial",
        norm_num_groups=8,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
    )


def _ddim() -> DDIMScheduler:
    """The scheduler settings the kandinsky-2-1 decoder ships with (and diffusers' tests use)."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
        thresholding=False,
    )


def _clip_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE like CLIP's own: every byte has a token, so no UTF-8 text is ever unknown."""
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = [*byte_chars, *(c + "</w>" for c in byte_chars)]
    merges: list[tuple[str, str]] = []
    room = (CLIP_VOCAB_SIZE - len(vocab) - 2) // 2  # each pair is merged mid-word and at a word end
    for a, b in [(a, b) for a in _LETTERS for b in _LETTERS][:room]:
        merges += [(a, b), (a, b + "</w>")]
        vocab += [a + b, a + b + "</w>"]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=merges,  # type: ignore[arg-type]  # the hint says list[str]; tokenizers' BPE wants pairs
        model_max_length=MAX_TOKENS,
    )


def _mclip_tokenizer() -> XLMRobertaTokenizer:
    """A SentencePiece-style Unigram vocabulary; characters outside it become <unk>, never an error."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-R's ids 0..3; the tokenizer hard-codes unk_id=3
    chars = [chr(c) for c in range(33, 127)] + list(_CYRILLIC) + list(_CYRILLIC.upper())
    # Scores are log-probabilities: longer pieces win over spelling a word out character by character.
    pieces = [("▁", -3.0)] + [(c, -5.0) for c in chars] + [("▁" + c, -4.5) for c in _LETTERS + _CYRILLIC]
    bigrams = [a + b for a in _LETTERS for b in _LETTERS]
    room = MCLIP_VOCAB_SIZE - len(specials) - len(pieces) - 1
    pieces += ([(p, -6.0) for p in bigrams] + [("▁" + p, -7.0) for p in bigrams])[:room]
    vocab = [(s, 0.0) for s in specials] + pieces + [("<mask>", 0.0)]
    assert len(vocab) == MCLIP_VOCAB_SIZE, len(vocab)
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=512)
