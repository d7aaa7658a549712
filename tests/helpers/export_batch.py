"""Batches for the export tests and benchmark, made through the real status store and storage.

No worker runs: each planned job is created, started and finished by `StatusStore`, and its
images and metadata are put in storage as the worker would (same keys, same metadata fields).
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from PIL import Image

from kandinsky_batch.keys import job_id
from kandinsky_batch.schema import JobSpec
from kandinsky_batch.storage import Storage, image_key, metadata_key
from kandinsky_batch.store.status import StatusStore

MODELS = {
    "prior": {"id": "kandinsky-community/kandinsky-2-1-prior", "revision": "a1b2c3"},
    "decoder": {"id": "kandinsky-community/kandinsky-2-1", "revision": "d4e5f6"},
}


@dataclass(frozen=True)
class Planned:
    """One job of a made-up batch and what becomes of it."""

    index: int
    prompt: str
    seed: int
    images: int = 1
    outcome: str = "succeeded"  # succeeded, canceled, queued, running, or failed:<code>
    clip_score: float | list[float] | None = None  # None: no clip_score field in the metadata
    broken: str = ""  # "missing": image 0's object is deleted; "garbage": it is not an image
    size: int = 16  # the stored PNG's side


def png(index: int, k: int, size: int = 16) -> bytes:
    """A PNG that differs by job and image: one colour when small, noise (incompressible) from 256."""
    buf = io.BytesIO()
    if size >= 256:
        noise = random.Random(index * 8 + k).randbytes(size * size * 3)
        Image.frombytes("RGB", (size, size), noise).save(buf, format="PNG")
    else:
        color = (index % 251, (index // 251) % 251, 40 * k % 251)
        Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def write_batch(store: StatusStore, storage: Storage, batch_id: str, jobs: Iterable[Planned]) -> None:
    """Create the jobs, then take each to its planned state with its objects in storage."""
    planned = list(jobs)
    store.create_jobs(batch_id, [(p.index, p.seed) for p in planned])
    for p in planned:
        finish(store, storage, batch_id, p)


def finish(store: StatusStore, storage: Storage, batch_id: str, p: Planned) -> None:
    jid = job_id(batch_id, p.index)
    if p.outcome == "queued":
        return
    if p.outcome == "canceled":
        store.cancel(jid)
        return
    side = max(64, p.size)  # a spec's sides are multiples of 64; the stored PNGs may be smaller
    spec = JobSpec(prompt=p.prompt, seed=p.seed, height=side, width=side, num_images=p.images)
    store.start(jid, "export-test", 2, spec.wire())
    if p.outcome.startswith("failed:"):
        store.fail(jid, p.outcome.removeprefix("failed:"), "made up for the export tests")
        return
    if p.outcome == "running":
        return
    uris = []
    for k in range(p.images):
        key = image_key(batch_id, jid, k, "png")
        body = b"not an image" if p.broken == "garbage" and k == 0 else png(p.index, k, p.size)
        uris.append(storage.put(key, body, "image/png"))
    meta: dict[str, object] = {
        "job_id": jid,
        "batch_id": batch_id,
        "spec": spec.model_dump(mode="json"),
        "seed": p.seed,
        "models": MODELS,
        "versions": {"kandinsky-batch": "0.1.0", "diffusers": "0.30.0"},
        "outputs": uris,
    }
    if p.clip_score is not None:
        meta["clip_score"] = p.clip_score
    meta_uri = storage.put(metadata_key(batch_id, jid), json.dumps(meta).encode(), "application/json")
    store.succeed(jid, uris, meta_uri)
    if p.broken == "missing":
        storage_delete(storage, image_key(batch_id, jid, 0, "png"))


def storage_delete(storage: Storage, key: str) -> None:
    """Delete an object behind the store's back (the Storage protocol has no delete)."""
    from kandinsky_batch.storage.file import FileStorage
    from kandinsky_batch.storage.s3 import S3Storage

    if isinstance(storage, FileStorage):
        (storage.root / key).unlink()
    elif isinstance(storage, S3Storage):
        storage.client.delete_object(Bucket=storage.bucket, Key=storage._object_key(key))


def plain(n: int, prompts: Iterator[str] | None = None) -> list[Planned]:
    """`n` succeeded one-image jobs with a CLIP score each (for the benchmark and big tests)."""
    return [
        Planned(i, next(prompts) if prompts else f"prompt {i}", 1000 + i, clip_score=round(i % 100 / 100, 2))
        for i in range(n)
    ]
