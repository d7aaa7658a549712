"""Fetch and check input images: `data:` URLs, `file://` under allowed roots, storage URIs, https (opt-in).

Only PNG, JPEG and WebP are read; byte and pixel caps apply before decoding,
and Pillow's decompression-bomb warning is a refusal, not a log line. Every
image is converted to RGB (masks to L). The pipelines then resize inputs to
the job's width x height.
"""

from __future__ import annotations

import base64
import binascii
import io
import stat
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, ImageDraw

from kandinsky_batch.errors import BadInput
from kandinsky_batch.schema import JobSpec, Mode
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage
from kandinsky_batch.storage.file import file_root
from worker.generate import Inputs
from worker.remote import fetch_https

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})


class InputLoader:
    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage
        roots = list(settings.input_roots)
        if urlparse(settings.storage_url).scheme in ("", "file"):
            roots.append(file_root(settings.storage_url))
        self.roots = [r.resolve() for r in roots]

    def load(self, spec: JobSpec) -> Inputs:
        """All input images a job needs, or BadInput naming what is wrong."""
        if spec.mode is Mode.INTERPOLATE:
            conditions: list[str | Image.Image] = [
                c.text if c.text is not None else self.image(c.image or "", "condition image")
                for c in spec.conditions or []
            ]
            return Inputs(conditions=conditions)
        if spec.mode not in (Mode.IMG2IMG, Mode.INPAINT):
            return Inputs()
        image = self.image(spec.image or "", "image")
        mask = self.mask(spec, image.size) if spec.mode is Mode.INPAINT else None
        return Inputs(image=image, mask=mask)

    def mask(self, spec: JobSpec, size: tuple[int, int]) -> Image.Image:
        """WHITE = repaint. Rectangles are drawn in the input image's pixel coordinates."""
        if isinstance(spec.mask, list):
            canvas = Image.new("L", size, 0)
            draw = ImageDraw.Draw(canvas)
            for x0, y0, x1, y1 in spec.mask:
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
            return canvas
        mask = self.image(spec.mask or "", "mask", mode="L")
        if mask.size != size:
            raise BadInput(f"mask is {mask.size[0]}x{mask.size[1]} but image is {size[0]}x{size[1]}")
        return mask

    def image(self, uri: str, what: str, mode: str = "RGB") -> Image.Image:
        return decode_image(self.fetch(uri, what), what, self.settings.max_input_pixels).convert(mode)

    def fetch(self, uri: str, what: str) -> bytes:
        scheme = urlparse(uri).scheme
        if scheme == "data":
            data = decode_data_url(uri, what)
        elif scheme == "file":
            data = self._read_file(uri, what)
        elif scheme == "s3":
            data = self._read_storage(uri, what)
        elif scheme == "https":
            data = fetch_https(uri, self.settings, what)
        else:
            raise BadInput(
                f"{what}: unsupported URI scheme {scheme or '(none)'!r}; use data:, file://, s3:// or https://"
            )
        if len(data) > self.settings.max_input_bytes:
            raise BadInput(
                f"{what}: {len(data)} bytes is over the {self.settings.max_input_bytes} byte limit"
            )
        return data

    def _read_file(self, uri: str, what: str) -> bytes:
        path = Path(unquote(urlparse(uri).path)).resolve()
        if not any(path.is_relative_to(root) for root in self.roots):
            raise BadInput(f"{what}: {path} is outside the allowed input folders")
        try:
            info = path.stat()
            if not stat.S_ISREG(info.st_mode):
                raise BadInput(f"{what}: {path} is not a regular file")
            if info.st_size > self.settings.max_input_bytes:
                raise BadInput(f"{what}: file is over the {self.settings.max_input_bytes} byte limit")
            with path.open("rb") as fh:
                return fh.read(self.settings.max_input_bytes + 1)
        except OSError as exc:
            raise BadInput(f"{what}: cannot read {path}: {exc.strerror}") from None

    def _read_storage(self, uri: str, what: str) -> bytes:
        key = self.storage.key_for(uri)
        if key is None:
            raise BadInput(f"{what}: {uri} is not in this worker's storage")
        try:
            return self.storage.get(key)
        except KeyError:
            raise BadInput(f"{what}: {uri} does not exist") from None


def decode_data_url(uri: str, what: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise BadInput(f"{what}: a data: URL must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{what}: invalid base64 in data: URL") from None


def decode_image(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Open and fully decode an image, refusing other formats, bombs and broken files."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
            width, height = image.size
            if width * height > max_pixels:
                raise BadInput(f"{what}: {width}x{height} pixels is over the {max_pixels} pixel limit")
            image.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise BadInput(f"{what}: refused as a decompression bomb") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInput(f"{what}: not a readable PNG, JPEG or WebP image ({exc})") from None
    return image
