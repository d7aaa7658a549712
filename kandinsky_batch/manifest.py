"""A batch's jobs read in pipelined chunks, and its manifest: one JSON line per job.

The manifest (job -> state, seed, outputs, error, spec) is written to storage
when a batch is done, so it outlives the job hashes in Redis (they expire).
It is spooled through a temp file, never joined in memory: a 1M-job manifest is ~0.5 GB.
It is written by the caller whose status change finished the batch (the store says which
change did): the worker that stored or failed the last job, or the producer whose cancel
did it. A status change itself never writes to storage.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from kandinsky_batch.errors import KandinskyBatchError
from kandinsky_batch.schema import JobStatus
from kandinsky_batch.storage import Storage, manifest_key
from kandinsky_batch.store.status import StatusStore

log = logging.getLogger(__name__)

MANIFEST_CONTENT_TYPE = "application/x-ndjson"
SPOOL_MAX_BYTES = 4 * 1024 * 1024  # a manifest up to this size stays in memory, a bigger one goes to disk


def manifest_line(job: JobStatus) -> dict[str, Any]:
    """What the manifest keeps of one job (enough to find, reproduce or retry it)."""
    return {
        "job_id": job.job_id,
        "index": job.index,
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
    for job in status.jobs(batch_id):
        yield manifest_line(job)


def encode_line(line: dict[str, Any]) -> str:
    return json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"


@contextmanager
def spooled_lines(lines: Iterable[dict[str, Any]], max_size: int = SPOOL_MAX_BYTES) -> Iterator[IO[bytes]]:
    """The encoded lines in a temp file, rewound; memory stays flat however many lines there are.

    The file lives in memory up to `max_size` bytes, then on disk; it is deleted on exit.
    """
    with tempfile.SpooledTemporaryFile(max_size=max_size, mode="w+b") as fh:
        for line in lines:
            fh.write(encode_line(line).encode())
        fh.seek(0)
        yield fh


def write_manifest(status: StatusStore, storage: Storage, batch_id: str) -> str:
    """Write the batch's JSONL manifest to storage, record its URI on the batch, and return it.

    The key is deterministic (`{batch_id}/manifest.jsonl`): writing it again overwrites it.
    Every line is read before the upload starts, so a failed read writes nothing.
    """
    with spooled_lines(manifest_lines(status, batch_id)) as body:
        uri = storage.put_file(manifest_key(batch_id), body, MANIFEST_CONTENT_TYPE)
    status.set_manifest(batch_id, uri)
    return uri


BatchDone = Callable[[str], None]  # told the id of a batch the caller saw finish


def manifest_writer(status: StatusStore, storage: Storage) -> BatchDone:
    """What a caller that saw a batch finish calls: writes its manifest; a failure only logs.

    The change that finished the batch stands either way, and the manifest can be written again.
    """

    def batch_done(batch_id: str) -> None:
        try:
            uri = write_manifest(status, storage, batch_id)
            log.info("batch %s done; manifest %s", batch_id, uri)
        except (KandinskyBatchError, OSError, ValueError) as exc:
            log.warning("batch %s is done but its manifest was not written: %s", batch_id, exc)

    return batch_done
