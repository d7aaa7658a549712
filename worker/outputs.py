"""Encoding images (PNG with the generation parameters in text chunks, WebP, JPEG)."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image, PngImagePlugin

FORMATS = {"png": ("PNG", "image/png"), "webp": ("WEBP", "image/webp"), "jpeg": ("JPEG", "image/jpeg")}


def encode_image(image: Image.Image, fmt: str, quality: int, parameters: dict[str, Any]) -> tuple[bytes, str]:
    """Encode one image; return (bytes, content type). PNGs carry `parameters` as JSON text."""
    pil_format, content_type = FORMATS[fmt]
    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("parameters", json.dumps(parameters, ensure_ascii=False, sort_keys=True))
        info.add_text("Software", "kandinsky-batch")
        image.save(buf, format=pil_format, pnginfo=info)
    else:
        image.convert("RGB").save(buf, format=pil_format, quality=quality)
    return buf.getvalue(), content_type


def extension(fmt: str) -> str:
    return "jpg" if fmt == "jpeg" else fmt
