"""Thumbnails for the gallery: made once into DIR/thumbs/, from the originals in storage.

Pillow comes with the worker extra (and the `gallery` extra), not with the producer's own
dependencies, so it is imported here only when a thumbnail is made. Without it the gallery still
works: each card shows its full-size original, scaled by the browser.
"""

from __future__ import annotations

import importlib.util
import io
import os
import tempfile
from pathlib import Path

from kandinsky_batch.storage import Storage

THUMB_PX = 256
THUMB_FORMAT = "webp"  # about a tenth of a PNG's size; every browser since 2020 shows it
THUMB_QUALITY = 80


def pillow_available() -> bool:
    return importlib.util.find_spec("PIL") is not None


def thumb_name(job_id: str, index: int, version: float | None) -> str:
    """A name that changes when the job is generated again (a retry), so a stale thumbnail is never kept."""
    stamp = f"{int((version or 0) * 1000):x}"
    return f"{job_id}-{index}-{stamp}.{THUMB_FORMAT}"


def make_thumb(storage: Storage, key: str, target: Path, mode: int, size: int = THUMB_PX) -> bool:
    """Write a thumbnail of the object `key` to `target` unless it is already there; True if made now.

    The original is read whole (one image at a time per thread) and the thumbnail is renamed into
    place, so an interrupted run never leaves half a file that a later run would keep. It gets
    `mode` (`new_file_mode()`), as the page's other files, rather than mkstemp's 0600.
    """
    if target.exists():
        return False
    from PIL import Image

    with Image.open(io.BytesIO(storage.get(key))) as image:
        image.thumbnail((size, size))
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format=THUMB_FORMAT.upper(), quality=THUMB_QUALITY)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True
