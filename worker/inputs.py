"""Fetch and check input images: `data:` URLs, `file://` under allowed roots, storage URIs, https (opt-in).

Only PNG, JPEG and WebP are read; byte and pixel caps apply before decoding,
and Pillow's decompression-bomb warning is a refusal, not a log line. Every
image is converted to RGB (masks to L). The pipelines then resize inputs to
the job's width x height.

A job of a tenant (submitted with an API key) may read only what `kandinsky_batch.tenancy`
allows, checked again here against its batch's recorded tenant, and a refused or failed read
tells it only a generic reason: the worker's log keeps the detail (paths, DNS answers).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import stat
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, ImageDraw

from kandinsky_batch.errors import BadInput, InvalidSpec
from kandinsky_batch.schema import JobSpec, Mode, Rect
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage import Storage
from kandinsky_batch.tenancy import check_inputs, sources_prefix
from worker.generate import Inputs, InputSource
from worker.remote import fetch_https

log = logging.getLogger(__name__)

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


class InputLoader:
    def __init__(self, settings: Settings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage
        roots = list(settings.input_roots)
        store_root = storage.local_path("")  # None unless storage is a local folder
        if store_root is not None:
            roots.append(store_root)
        self.roots = [r.resolve() for r in roots]

    def load(self, spec: JobSpec, tenant: str = "") -> Inputs:
        """All input images a job needs, with where each came from, or BadInput naming what is wrong.

        `tenant` is the job's batch's tenant ('' for none): its job may read only what
        `kandinsky_batch.tenancy` allows.
        """
        if tenant:
            try:
                check_inputs(spec, tenant, self.storage.key_for)
            except InvalidSpec as exc:
                raise BadInput(exc.message) from None
        reader = _Reader(self, tenant)
        sources: list[InputSource] = []
        if spec.mode is Mode.INTERPOLATE:
            conditions: list[str | Image.Image] = [
                c.text
                if c.text is not None
                else reader.image(c.image or "", "condition image", f"conditions.{i}.image", sources)
                for i, c in enumerate(spec.conditions or [])
            ]
            return Inputs(conditions=conditions, sources=sources)
        if spec.mode not in (Mode.IMG2IMG, Mode.INPAINT):
            return Inputs()
        image = reader.image(spec.image or "", "image", "image", sources)
        mask = reader.mask(spec, image.size, sources) if spec.mode is Mode.INPAINT else None
        return Inputs(image=image, mask=mask, sources=sources)

    def image(
        self, uri: str, what: str, field: str, sources: list[InputSource], mode: str = "RGB", tenant: str = ""
    ) -> Image.Image:
        """One input image, read as a job of `tenant` would read it."""
        return _Reader(self, tenant).image(uri, what, field, sources, mode)

    def roots_for(self, tenant: str) -> list[Path]:
        """The folders `file://` inputs may come from: a tenant's sources folder, else every root."""
        if not tenant:
            return self.roots
        folder = self.storage.local_path(sources_prefix(tenant))
        return [] if folder is None else [folder.resolve()]


class _Reader:
    """Reads one job's inputs, for its tenant ('' for none)."""

    def __init__(self, loader: InputLoader, tenant: str) -> None:
        self.settings = loader.settings
        self.storage = loader.storage
        self.tenant = tenant
        self.roots = loader.roots_for(tenant)

    def mask(self, spec: JobSpec, size: tuple[int, int], sources: list[InputSource]) -> Image.Image:
        """WHITE = repaint. Rectangles are in the input image's pixels, [x0, x1) x [y0, y1)."""
        if isinstance(spec.mask, list):
            return draw_mask(spec.mask, size)
        mask = self.image(spec.mask or "", "mask", "mask", sources, mode="L")
        if mask.size != size:
            raise BadInput(f"mask is {mask.size[0]}x{mask.size[1]} but image is {size[0]}x{size[1]}")
        return mask

    def image(
        self, uri: str, what: str, field: str, sources: list[InputSource], mode: str = "RGB"
    ) -> Image.Image:
        """Fetch, check and decode one input; append where it came from to `sources`."""
        data = self.fetch(uri, what)
        image = decode_image(data, what, self.settings.max_input_pixels)
        inline = urlparse(uri).scheme == "data"
        sources.append(
            InputSource(
                field=field,
                uri=uri if not inline else "",
                sha256=hashlib.sha256(data).hexdigest(),
                ext=EXTENSIONS.get(image.format or "", "png"),
                data=data if inline else None,
            )
        )
        return image.convert(mode)

    def fetch(self, uri: str, what: str) -> bytes:
        """The input's bytes; for a tenant's job, a failed read says only that it failed."""
        if not self.tenant or urlparse(uri).scheme == "data":
            return self._fetch(uri, what)  # inline bytes: their errors name nothing of ours
        try:
            return self._fetch(uri, what)
        except BadInput as exc:
            log.info("input refused for tenant %s: %s", self.tenant, exc.message)
            raise BadInput(
                f"{what}: cannot be read (missing, unreachable, too large or not allowed; "
                "the worker's log has the reason)"
            ) from None

    def _fetch(self, uri: str, what: str) -> bytes:
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
        try:
            path = Path(unquote(urlparse(uri).path)).resolve()
        except (ValueError, OSError) as exc:  # a NUL byte, a symlink loop
            raise BadInput(f"{what}: not a usable file path ({exc})") from None
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
        if self.tenant and not key.startswith(sources_prefix(self.tenant)):
            raise BadInput(f"{what}: {uri} is outside {sources_prefix(self.tenant)}")
        try:
            return self.storage.get(key)
        except KeyError:
            raise BadInput(f"{what}: {uri} does not exist") from None


def draw_mask(rectangles: list[Rect], size: tuple[int, int]) -> Image.Image:
    """A black L mask of `size` with each [x0, y0, x1, y1] white: x0, y0 inclusive, x1, y1 exclusive.

    A rectangle that reaches past the image is cut at its edge; one wholly outside it is BadInput,
    since it would repaint nothing.
    """
    width, height = size
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for n, (x0, y0, x1, y1) in enumerate(rectangles):
        if x0 >= width or y0 >= height:
            raise BadInput(f"mask: rectangle {n} {[x0, y0, x1, y1]} lies outside the {width}x{height} image")
        draw.rectangle((x0, y0, min(x1, width) - 1, min(y1, height) - 1), fill=255)
    return canvas


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
