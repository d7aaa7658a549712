"""Input images are checked before decoding; outputs carry their parameters."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from kandinsky_batch.errors import BadInput
from kandinsky_batch.schema import JobSpec
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage.file import FileStorage
from tests.helpers.images import data_url, image_bytes, png_url
from worker.inputs import InputLoader, decode_image
from worker.outputs import encode_image


@pytest.fixture
def loader(tmp_path: Path) -> InputLoader:
    settings = Settings(
        storage_url=(tmp_path / "store").as_uri(),
        input_roots=[tmp_path / "inputs"],
        max_input_bytes=200_000,
        max_input_pixels=512 * 512,
    )
    return InputLoader(settings, FileStorage(tmp_path / "store"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_jpeg_webp_are_read_and_converted_to_rgb(fmt):
    img = decode_image(image_bytes((32, 16), fmt=fmt), "image", 10**6)
    assert img.size == (32, 16)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_formats_are_refused(fmt):
    with pytest.raises(BadInput, match="not a readable PNG, JPEG or WebP"):
        decode_image(image_bytes((8, 8), fmt=fmt), "image", 10**6)


def test_images_over_the_pixel_cap_are_refused_before_decoding():
    with pytest.raises(BadInput, match="pixel limit"):
        decode_image(image_bytes((600, 600)), "image", 512 * 512)


def test_a_decompression_bomb_is_refused(monkeypatch):
    # Pillow warns past MAX_IMAGE_PIXELS and errors past twice that: both are refusals here.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadInput, match="decompression bomb"):
        decode_image(image_bytes((40, 40)), "image", 10**9)
    with pytest.raises(BadInput, match="decompression bomb"):
        decode_image(image_bytes((100, 100)), "image", 10**9)


def test_truncated_files_are_refused():
    with pytest.raises(BadInput):
        decode_image(image_bytes((64, 64))[:60], "image", 10**6)


def test_rgba_and_grey_inputs_become_rgb(loader: InputLoader):
    spec = JobSpec(mode="img2img", prompt="x", image=data_url(image_bytes((16, 16), mode="L")))
    assert loader.load(spec).image.mode == "RGB"  # type: ignore[union-attr]


def test_file_inputs_only_from_allowed_folders(loader: InputLoader, tmp_path: Path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "a.png").write_bytes(image_bytes((8, 8)))
    (tmp_path / "secret.png").write_bytes(image_bytes((8, 8)))
    ok = loader.image((tmp_path / "inputs" / "a.png").as_uri(), "image", "image", [])
    assert ok.size == (8, 8)
    with pytest.raises(BadInput, match="outside the allowed"):
        loader.image((tmp_path / "inputs" / ".." / "secret.png").as_uri(), "image", "image", [])
    with pytest.raises(BadInput, match="cannot read"):
        loader.image((tmp_path / "inputs" / "missing.png").as_uri(), "image", "image", [])


def test_huge_inline_data_is_refused(loader: InputLoader):
    with pytest.raises(BadInput, match="byte limit"):
        loader.image(data_url(b"\0" * 300_000), "image", "image", [])


def test_rectangle_masks_are_white_where_to_repaint(loader: InputLoader):
    spec = JobSpec(mode="inpaint", prompt="x", image=png_url((64, 32)), mask=[(0, 0, 16, 32)])
    mask = loader.load(spec).mask
    assert mask is not None and mask.size == (64, 32) and mask.mode == "L"
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((15, 31)) == 255 and mask.getpixel((16, 0)) == 0


def test_a_mask_of_another_size_is_refused(loader: InputLoader):
    spec = JobSpec(mode="inpaint", prompt="x", image=png_url((64, 64)), mask=png_url((32, 32)))
    with pytest.raises(BadInput, match="mask is 32x32 but image is 64x64"):
        loader.load(spec)


def test_png_output_carries_the_parameters_in_a_text_chunk():
    data, content_type = encode_image(Image.new("RGB", (8, 8)), "png", 95, {"seed": 3, "prompt": "猫"})
    assert content_type == "image/png"
    assert json.loads(Image.open(io.BytesIO(data)).text["parameters"]) == {"seed": 3, "prompt": "猫"}


@pytest.mark.parametrize(
    ("fmt", "pil", "mime"), [("webp", "WEBP", "image/webp"), ("jpeg", "JPEG", "image/jpeg")]
)
def test_webp_and_jpeg_outputs_honour_quality(fmt, pil, mime):
    noisy = Image.effect_noise((64, 64), 60).convert("RGB")
    low, _ = encode_image(noisy, fmt, 10, {})
    high, content_type = encode_image(noisy, fmt, 95, {})
    assert content_type == mime and Image.open(io.BytesIO(high)).format == pil
    assert len(low) < len(high)
