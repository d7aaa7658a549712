"""One card per job: what the page shows of it, with links that work from the gallery folder.

File storage gets links relative to the gallery folder (the folder and the store can move
together, and nothing is copied); S3 gets presigned URLs (`Storage.presign`), which expire.
Thumbnails are always local files under DIR/thumbs/, so the grid loads without the network.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kandinsky_batch.schema import JobStatus
from kandinsky_batch.storage import Storage
from kandinsky_batch.storage.file import new_file_mode
from producer.gallery.thumbs import make_thumb, thumb_name

THUMBS = "thumbs"


@dataclass
class Links:
    """Turns storage keys into hrefs for a page written to `out`."""

    storage: Storage
    out: Path
    expires_s: int

    def __post_init__(self) -> None:
        self.out = self.out.resolve()
        self.local = self.storage.local_path("") is not None

    def href(self, key: str) -> str:
        path = self.storage.local_path(key)
        if path is None:
            return self.storage.presign(key, self.expires_s)
        return quote(Path(os.path.relpath(path, self.out)).as_posix())


@dataclass
class CardMaker:
    """Builds cards (and their thumbnails); safe to call from several threads at once."""

    links: Links
    thumbs: bool  # False without Pillow: cards show their originals
    file_mode: int = field(default_factory=new_file_mode)  # read once, before the threads start

    def card(self, job: JobStatus) -> tuple[dict[str, Any], int]:
        """The card of `job` and how many thumbnails were made for it now (0 when all were there)."""
        storage = self.links.storage
        meta = read_metadata(storage, job.metadata)
        spec = job.spec or meta.get("spec") or {}
        images, thumbs, made = [], [], 0
        for k, uri in enumerate(job.outputs):
            key = storage.key_for(uri)
            if key is None:  # written under another storage URL: link it as it is
                images.append(uri)
                thumbs.append(uri)
                continue
            images.append(self.links.href(key))
            if self.thumbs:
                name = thumb_name(job.job_id, k, job.finished_at)
                try:
                    made += make_thumb(storage, key, self.links.out / THUMBS / name, self.file_mode)
                    thumbs.append(f"{THUMBS}/{name}")
                except (KeyError, OSError, ValueError):  # gone or unreadable: the card says so itself
                    thumbs.append(images[-1])
            else:
                thumbs.append(images[-1])
        meta_key = storage.key_for(job.metadata) if job.metadata else None
        card = {
            "i": job.index,
            "id": job.job_id,
            "state": job.state.value,
            "seed": job.seed,
            "prompt": spec.get("prompt") or _conditions_text(spec),
            "mode": spec.get("mode", "text2img"),
            "size": [spec.get("width", 512), spec.get("height", 512)],
            "clip": _score(meta.get("clip_score")),
            "error": job.error.model_dump() if job.error else None,
            "images": images,
            "thumbs": thumbs,
            "meta": self.links.href(meta_key) if meta_key else None,
        }
        return card, made


def read_metadata(storage: Storage, metadata: str | None) -> dict[str, Any]:
    """A job's metadata object: inline JSON, or the JSON object its URI names; {} if there is none."""
    if not metadata:
        return {}
    try:
        if metadata.lstrip().startswith("{"):
            found = json.loads(metadata)
        else:
            key = storage.key_for(metadata)
            found = json.loads(storage.get(key)) if key is not None else {}
    except (KeyError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _score(value: object) -> float | None:
    """A job's CLIP score: a number, or the first of a multi-image job's list (its card's image)."""
    if isinstance(value, list) and value:
        value = value[0]
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _conditions_text(spec: dict[str, Any]) -> str:
    """An interpolation has no prompt: show its text conditions instead."""
    texts = [c["text"] for c in spec.get("conditions") or [] if isinstance(c, dict) and c.get("text")]
    return " + ".join(texts)
