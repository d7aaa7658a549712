"""One job's images as export samples: read from storage, checked, converted, described.

Runs on the reader threads, so it holds only one job's images at a time. A missing or
unreadable image is counted, never raised: one bad object must not stop a dataset export.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from kandinsky_batch.errors import StorageUnavailable
from kandinsky_batch.schema import JobStatus, image_seed
from kandinsky_batch.storage import Storage

log = logging.getLogger(__name__)

_PIL_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
QUALITY = 95  # for converted JPEG and WebP images, as the worker's default output_quality


@dataclass(frozen=True)
class Sample:
    """One image of one job, with what describes it (the `.json` sidecar and the parquet row)."""

    key: str
    ext: str
    image: bytes
    caption: str
    info: dict[str, Any]

    def json_bytes(self) -> bytes:
        return json.dumps(self.info, ensure_ascii=False, sort_keys=True).encode()


@dataclass
class JobSamples:
    """What reading one succeeded job gave: its samples, and how many images were left out."""

    samples: list[Sample] = field(default_factory=list)
    missing: int = 0
    filtered: int = 0


def sample_key(index: int, k: int) -> str:
    """`{job index:09d}_{image k}`: sorts by job index, then image; the same for the same batch."""
    return f"{index:09d}_{k}"


def clip_score_of(meta: dict[str, Any], k: int) -> float | None:
    """The metadata's `clip_score`: one number for the job, or one per image; None if absent."""
    value = meta.get("clip_score")
    if isinstance(value, list):
        value = value[k] if k < len(value) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def read_metadata(source: Storage, job: JobStatus) -> dict[str, Any]:
    """The job's metadata object, or {} if it is missing or not JSON (the status still has spec and seed)."""
    key = source.key_for(job.metadata) if job.metadata else None
    if key is None:
        return {}
    try:
        meta = json.loads(source.get(key))
    except (KeyError, ValueError, OSError, StorageUnavailable) as exc:
        log.warning("job %s: metadata %s unreadable: %s", job.job_id, job.metadata, exc)
        return {}
    return meta if isinstance(meta, dict) else {}


def read_image(source: Storage, uri: str, image_format: str | None) -> tuple[bytes, str, int, int] | None:
    """(bytes, extension, width, height) of one output, converted if asked; None if unreadable."""
    key = source.key_for(uri)
    if key is None:
        return None
    try:
        data = source.get(key)
        with Image.open(io.BytesIO(data)) as image:
            ext = _PIL_EXT.get(image.format or "")
            width, height = image.size
            if ext is None:
                return None
            if image_format is None or image_format == ext:
                return data, ext, width, height
            out = io.BytesIO()
            converted = image.convert("RGB") if image_format == "jpg" else image
            converted.save(out, format=_PIL_FORMAT[image_format], quality=QUALITY)
            return out.getvalue(), image_format, width, height
    except (KeyError, OSError, ValueError, UnidentifiedImageError, StorageUnavailable) as exc:
        log.warning("output %s unreadable: %s", uri, exc)
        return None


def read_job(
    source: Storage, job: JobStatus, image_format: str | None, min_clip_score: float | None
) -> JobSamples:
    """The samples of one succeeded job; images under `min_clip_score` are never read."""
    meta = read_metadata(source, job)
    spec: dict[str, Any] = meta["spec"] if isinstance(meta.get("spec"), dict) else job.spec or {}
    seed = meta.get("seed", job.seed)
    found = JobSamples(missing=0 if job.outputs else 1)
    for k, uri in enumerate(job.outputs):
        score = clip_score_of(meta, k)
        if min_clip_score is not None and (score is None or score < min_clip_score):
            found.filtered += 1
            continue
        image = read_image(source, uri, image_format)
        if image is None:
            found.missing += 1
            continue
        data, ext, width, height = image
        key = sample_key(job.index, k)
        caption = str(spec.get("prompt") or "")
        info = {
            "key": key,
            "job_id": job.job_id,
            "batch_id": job.batch_id,
            "index": job.index,
            "image_index": k,
            "caption": caption,
            "spec": spec,
            "seed": seed,
            "image_seed": image_seed(seed, k) if isinstance(seed, int) else None,
            "models": meta.get("models"),
            "versions": meta.get("versions"),
            "clip_score": score,
            "sha256": hashlib.sha256(data).hexdigest(),
            "width": width,
            "height": height,
            "format": ext,
        }
        found.samples.append(Sample(key, ext, data, caption, info))
    return found
