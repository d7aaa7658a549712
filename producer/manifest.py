"""A batch's jobs read in pipelined chunks, and its manifest: one JSON line per job.

The manifest (job -> state, seed, outputs, error, spec) is written to storage
when a batch is done, so it outlives the job hashes in Redis (they expire).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from producer.keys import job_id
from producer.schema import JobStatus
from producer.status import StatusStore, job_status_from_hash
from producer.storage import Storage, manifest_key

CHUNK = 500
MANIFEST_CONTENT_TYPE = "application/x-ndjson"


def batch_span(status: StatusStore, batch_id: str) -> int:
    """One more than the highest job index of a batch; raises NotFound for an unknown batch."""
    status.batch(batch_id)  # NotFound, never an empty answer, for an unknown id
    return int(status.redis.hget(status.keys.batch(batch_id), "span") or 0)


def iter_jobs(status: StatusStore, batch_id: str, chunk: int = CHUNK) -> Iterator[JobStatus]:
    """Every job of a batch in index order: one pipelined HGETALL round trip per `chunk` jobs.

    Jobs whose hash has expired (or indices never used) are left out.
    """
    span = batch_span(status, batch_id)
    for start in range(0, span, chunk):
        ids = [job_id(batch_id, i) for i in range(start, min(span, start + chunk))]
        pipe = status.redis.pipeline(transaction=False)
        for job in ids:
            pipe.hgetall(status.keys.job(job))
        for job, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                yield job_status_from_hash(job, batch_id, raw)


def manifest_line(job: JobStatus) -> dict[str, Any]:
    """What the manifest keeps of one job (enough to find, reproduce or retry it)."""
    return {
        "job_id": job.job_id,
        "index": int(job.job_id.rpartition("-")[2]),
        "state": job.state.value,
        "seed": job.seed,
        "outputs": job.outputs,
        "metadata": job.metadata,
        "error": job.error.model_dump() if job.error else None,
        "spec": job.spec,
        "attempts": job.attempts,
        "worker": job.worker,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def manifest_lines(status: StatusStore, batch_id: str) -> Iterator[dict[str, Any]]:
    """One dict per job of the batch, in index order; raises NotFound for an unknown batch."""
    for job in iter_jobs(status, batch_id):
        yield manifest_line(job)


def encode_line(line: dict[str, Any]) -> str:
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


def write_manifest(status: StatusStore, storage: Storage, batch_id: str) -> str:
    """Write the batch's JSONL manifest to storage, record its URI on the batch, and return it.

    The key is deterministic (`{batch_id}/manifest.jsonl`): writing it again overwrites it.
    """
    body = "".join(encode_line(line) for line in manifest_lines(status, batch_id)).encode()
    uri = storage.put(manifest_key(batch_id), body, MANIFEST_CONTENT_TYPE)
    status.set_manifest(batch_id, uri)
    return uri
