"""The tiny Kandinsky builder: folders load the real way, and all four modes run on CPU."""

import json
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from diffusers.pipelines.kandinsky.pipeline_kandinsky import KandinskyPipeline
from diffusers.pipelines.kandinsky.pipeline_kandinsky_img2img import KandinskyImg2ImgPipeline
from diffusers.pipelines.kandinsky.pipeline_kandinsky_inpaint import KandinskyInpaintPipeline
from diffusers.pipelines.kandinsky.pipeline_kandinsky_prior import KandinskyPriorPipeline
from PIL import Image
from safetensors.torch import load_file

from worker import tiny
from worker.tiny import is_tiny_complete, make_tiny

SIZE = 64
STEPS = 2


@dataclass(frozen=True)
class Pipes:
    prior: KandinskyPriorPipeline
    decoder: KandinskyPipeline
    inpaint: KandinskyInpaintPipeline


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Two intra-op threads on a busy 2-core runner were seen 10x slower than one; one is steady."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "kandinsky", seed=0)


@pytest.fixture(scope="module")
def pipes(tiny_root: pathlib.Path) -> Pipes:
    loaded = Pipes(
        prior=KandinskyPriorPipeline.from_pretrained(tiny_root / "prior"),
        decoder=KandinskyPipeline.from_pretrained(tiny_root / "decoder"),
        inpaint=KandinskyInpaintPipeline.from_pretrained(tiny_root / "inpaint"),
    )
    for pipe in (loaded.prior, loaded.decoder, loaded.inpaint):
        pipe.set_progress_bar_config(disable=True)
    return loaded


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _picture() -> Image.Image:
    """A smooth colour ramp: a deterministic input image for img2img, inpaint and interpolate."""
    ramp = np.linspace(0, 255, SIZE, dtype=np.uint8)
    rgb = np.stack(
        [np.tile(ramp, (SIZE, 1)), np.tile(ramp[:, None], (1, SIZE)), np.full((SIZE, SIZE), 128)], -1
    )
    return Image.fromarray(rgb.astype(np.uint8))


def _text2img(pipes: Pipes, prompt: str, seed: int = 0) -> Image.Image:
    embeds = pipes.prior(prompt, num_inference_steps=STEPS, generator=_gen(seed))
    return pipes.decoder(
        prompt,
        image_embeds=embeds.image_embeds,
        negative_image_embeds=embeds.negative_image_embeds,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        generator=_gen(seed),
    ).images[0]


def _weights(root: pathlib.Path) -> dict[str, torch.Tensor]:
    return load_file(root / "decoder" / "unet" / "diffusion_pytorch_model.safetensors")


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_folders_load_with_plain_from_pretrained(tiny_root: pathlib.Path, pipes: Pipes) -> None:
    assert is_tiny_complete(tiny_root)
    index = json.loads((tiny_root / "inpaint" / "model_index.json").read_text())
    assert index["_class_name"] == "KandinskyInpaintPipeline"
    assert pipes.decoder.unet.config.in_channels == 4
    assert pipes.inpaint.unet.config.in_channels == 9
    assert len(pipes.decoder.tokenizer) == pipes.decoder.text_encoder.config.vocab_size
    assert len(pipes.prior.tokenizer) == pipes.prior.text_encoder.config.vocab_size


def test_text2img_makes_a_64px_image(pipes: Pipes) -> None:
    image = _text2img(pipes, "a red cat in space")

    assert image.size == (SIZE, SIZE)


@pytest.mark.parametrize("prompt", ["Кошка в космосе", "宇宙里的猫", "🐱🚀 naïve café"])
def test_non_english_prompt_tokenizes_and_generates(pipes: Pipes, prompt: str) -> None:
    for tokenizer in (pipes.prior.tokenizer, pipes.decoder.tokenizer):
        ids = tokenizer(prompt).input_ids
        assert max(ids) < len(tokenizer)

    assert _text2img(pipes, prompt).size == (SIZE, SIZE)


def test_img2img_reuses_decoder_components(pipes: Pipes) -> None:
    img2img = KandinskyImg2ImgPipeline(**pipes.decoder.components)
    img2img.set_progress_bar_config(disable=True)
    embeds = pipes.prior("a watercolour", num_inference_steps=STEPS, generator=_gen(0))

    image = img2img(
        "a watercolour",
        image=_picture(),
        image_embeds=embeds.image_embeds,
        negative_image_embeds=embeds.negative_image_embeds,
        strength=0.5,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        generator=_gen(0),
    ).images[0]

    assert img2img.unet is pipes.decoder.unet
    assert image.size == (SIZE, SIZE)


@pytest.mark.parametrize("as_pil", [False, True], ids=["numpy-mask", "pil-mask"])
def test_inpaint_with_white_meaning_repaint(pipes: Pipes, as_pil: bool) -> None:
    mask = np.zeros((SIZE, SIZE), dtype=np.float32)
    mask[16:48, 16:48] = 1.0  # white: repaint this square, keep the rest
    mask_image: np.ndarray | Image.Image = Image.fromarray((mask * 255).astype(np.uint8)) if as_pil else mask
    embeds = pipes.prior("a hat", num_inference_steps=STEPS, generator=_gen(0))

    image = pipes.inpaint(
        "a hat",
        image=_picture(),
        mask_image=mask_image,
        image_embeds=embeds.image_embeds,
        negative_image_embeds=embeds.negative_image_embeds,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        generator=_gen(0),
    ).images[0]

    assert image.size == (SIZE, SIZE)


def test_interpolate_text_and_image(pipes: Pipes) -> None:
    embeds = pipes.prior.interpolate(
        ["a cat", _picture()], [0.5, 0.5], num_inference_steps=STEPS, generator=_gen(0)
    )

    image = pipes.decoder(
        "",
        image_embeds=embeds.image_embeds,
        negative_image_embeds=embeds.negative_image_embeds,
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        generator=_gen(0),
    ).images[0]

    assert image.size == (SIZE, SIZE)


def test_same_generator_seed_gives_the_same_image(pipes: Pipes) -> None:
    first = np.asarray(_text2img(pipes, "a lighthouse", seed=7))
    second = np.asarray(_text2img(pipes, "a lighthouse", seed=7))
    other = np.asarray(_text2img(pipes, "a lighthouse", seed=8))

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


def test_batch_with_per_image_generators_matches_each_alone_within_one_level(pipes: Pipes) -> None:
    """Batched matmuls round differently, so promise 1/255, not bits."""
    prompts, seeds = ["a cat", "a dog", "a boat"], [1, 2, 3]

    def run(batch: list[str], batch_seeds: list[int]) -> np.ndarray:
        embeds = pipes.prior(batch, num_inference_steps=STEPS, generator=[_gen(s) for s in batch_seeds])
        return pipes.decoder(
            batch,
            image_embeds=embeds.image_embeds,
            negative_image_embeds=embeds.negative_image_embeds,
            height=SIZE,
            width=SIZE,
            num_inference_steps=STEPS,
            generator=[_gen(s) for s in batch_seeds],
            output_type="np",
        ).images

    batched = run(prompts, seeds)
    alone = np.concatenate([run([p], [s]) for p, s in zip(prompts, seeds, strict=True)])

    assert np.abs(batched - alone).max() <= 1 / 255


def test_prior_negative_prompts_take_2n_generators_prompts_first(pipes: Pipes) -> None:
    """With negatives the prior runs prompts + negatives as one batch of 2N."""
    prompts, negatives = ["a cat", "a dog"], ["blurry", "blurry"]

    batched = pipes.prior(
        prompts,
        negative_prompt=negatives,
        num_inference_steps=STEPS,
        generator=[_gen(s) for s in (1, 2, 11, 12)],
    )
    alone = [
        pipes.prior([p], negative_prompt=[n], num_inference_steps=STEPS, generator=[_gen(s), _gen(ns)])
        for p, n, s, ns in zip(prompts, negatives, (1, 2), (11, 12), strict=True)
    ]

    assert batched.image_embeds.shape == batched.negative_image_embeds.shape == (2, tiny.HIDDEN)
    assert torch.allclose(batched.image_embeds, torch.cat([a.image_embeds for a in alone]), atol=1e-4)
    assert torch.allclose(
        batched.negative_image_embeds, torch.cat([a.negative_image_embeds for a in alone]), atol=1e-4
    )


def test_same_seed_builds_byte_identical_folders(tiny_root: pathlib.Path, tmp_path: pathlib.Path) -> None:
    again = make_tiny(tmp_path / "again", seed=0)
    other = make_tiny(tmp_path / "other", seed=1)

    weights, weights_again = _weights(tiny_root), _weights(again)
    assert weights.keys() == weights_again.keys()
    assert all(torch.equal(weights[name], weights_again[name]) for name in weights)
    assert _files(again) == _files(tiny_root)  # tokenizers and configs too
    assert not torch.equal(_weights(other)["conv_in.weight"], weights["conv_in.weight"])


def test_build_leaves_the_callers_torch_rng_alone(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)

    make_tiny(tmp_path / "models", seed=0)

    assert torch.equal(torch.rand(3), expected)


def test_is_tiny_complete_rejects_missing_and_unmarked_folders(tmp_path: pathlib.Path) -> None:
    assert not is_tiny_complete(tmp_path / "absent")
    for part in tiny.PARTS:
        (tmp_path / "unmarked" / part).mkdir(parents=True)
        (tmp_path / "unmarked" / part / "model_index.json").write_text("{}")

    assert not is_tiny_complete(tmp_path / "unmarked")


def _crash(seed: int) -> KandinskyInpaintPipeline:
    raise RuntimeError("disk full")


def test_crash_midway_leaves_nothing_that_looks_complete(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny, "_inpaint", _crash)

    with pytest.raises(RuntimeError, match="disk full"):
        make_tiny(tmp_path / "models", seed=0)

    assert not is_tiny_complete(tmp_path / "models")
    assert list(tmp_path.iterdir()) == []


def test_crash_while_rebuilding_keeps_the_old_folder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tiny(tmp_path / "models", seed=0)
    before = _files(root)
    monkeypatch.setattr(tiny, "_inpaint", _crash)

    with pytest.raises(RuntimeError, match="disk full"):
        make_tiny(root, seed=1)

    assert is_tiny_complete(root)
    assert _files(root) == before
    assert [p.name for p in tmp_path.iterdir()] == ["models"]


def test_make_tiny_prints_the_settings_that_point_a_worker_at_it(tmp_path: pathlib.Path, capsys):
    # Given `models make-tiny DIR` run as a person would
    from producer.cli.main import main

    assert main(["models", "make-tiny", str(tmp_path / "m")]) == 0
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("export KANDINSKY_BATCH_") and "_MODEL=" in line
    )
    # Then each model setting names a folder that diffusers loads from
    assert set(exports) == {f"KANDINSKY_BATCH_{n}_MODEL" for n in ("PRIOR", "DECODER", "INPAINT")}
    for folder in exports.values():
        assert (pathlib.Path(folder) / "model_index.json").is_file()
