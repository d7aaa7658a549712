"""Small input images for tests, as bytes or data: URLs."""

from __future__ import annotations

import base64
import io

from PIL import Image


def image_bytes(
    size: tuple[int, int] = (64, 64),
    fmt: str = "PNG",
    color: tuple[int, int, int] = (200, 80, 40),
    mode: str = "RGB",
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 255).save(buf, format=fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png_url(size: tuple[int, int] = (64, 64), **kw: object) -> str:
    return data_url(image_bytes(size, **kw))  # type: ignore[arg-type]
