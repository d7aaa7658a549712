"""Read one queue message into jobs, validating every spec a second time.

A message that is not our format fails the jobs it names (if any can be named)
with `bad_message`; an invalid spec fails only its own job. Nothing here raises
out to the worker. A job failed here never started on this worker: its log line and metric
carry the mode its spec names ('' when that is no mode at all).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kandinsky_batch.errors import BadMessage, InvalidSpec, KandinskyBatchError, UnsupportedMode
from kandinsky_batch.keys import JobField, JobRef
from kandinsky_batch.logs import log_fields
from kandinsky_batch.manifest import BatchDone
from kandinsky_batch.schema import Mode, Priority
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.queues import Created
from kandinsky_batch.store.status import StatusStore
from kandinsky_batch.wire import parse_message, validate_spec
from worker import metrics
from worker.jobs import Job

log = logging.getLogger(__name__)


def read_message(
    message: dict[str, Any],
    settings: Settings,
    status: StatusStore,
    on_batch_done: BatchDone,
    priority: Priority = Priority.NORMAL,
    queue_list: str = "",
) -> list[Job]:
    """The runnable jobs of a message (popped from `queue_list`); the others are recorded as failed.

    A failure here that finishes its batch is told to `on_batch_done` (the batch's manifest).
    """
    try:
        parsed = parse_message(message)
    except BadMessage as exc:
        log.warning("dropping a message: %s", exc.message)
        return []
    batch_id = parsed.batch_id
    # Each job gets its status hash now; jobs sent straight onto the queue (open format) have
    # no status yet, and get it here too. A job that finished long ago (expired) is left alone.
    stored = status.receive(batch_id, [(e.index, e.seed) for e in parsed.entries], priority, queue_list)
    gone = {e.index for e, (flag, _) in zip(parsed.entries, stored, strict=True) if flag is Created.GONE}
    seeds = {e.index: seed for e, (_, seed) in zip(parsed.entries, stored, strict=True)}
    if gone:
        log.info("batch %s: %d jobs finished and expired before; not run again", batch_id, len(gone))
    if parsed.problem:
        log.warning("bad message for batch %s: %s", batch_id, parsed.problem, extra={"batch_id": batch_id})
        for e in parsed.entries:
            _fail(status, on_batch_done, JobRef(batch_id, e.index), e.data, BadMessage(parsed.problem))
        return []

    jobs = []
    served = set(settings.modes)
    tenant = status.batch_tenant(batch_id)  # its jobs may read only what the tenant may
    for e in parsed.entries:
        if e.index in gone or e.data is None:
            continue
        ref = JobRef(batch_id, e.index)
        data = dict(e.data)
        if data.get("seed") is None:  # a given seed is validated like any field; none: the stored one
            data["seed"] = seeds[e.index]
        try:
            spec = validate_spec(data, settings)
            if spec.mode not in served:
                raise UnsupportedMode(
                    f"this worker serves {', '.join(m.value for m in served)}, not {spec.mode}"
                )
        except (InvalidSpec, UnsupportedMode) as exc:
            _fail(status, on_batch_done, ref, data, exc)
            continue
        jobs.append(Job(ref, spec, tenant))
    return jobs


def _fail(
    status: StatusStore,
    on_batch_done: BatchDone,
    ref: JobRef,
    data: Mapping[str, Any] | None,
    exc: KandinskyBatchError,
) -> None:
    mode = (data or {}).get("mode", Mode.TEXT2IMG.value)
    mode = mode if isinstance(mode, str) and mode in {m.value for m in Mode} else ""
    attempt = int(status.field(ref, JobField.ATTEMPTS) or 0)  # a rare line: one read is fine
    with log_fields(job_id=ref.id, batch_id=ref.batch_id, mode=mode, attempt=attempt):
        log.info("job %s failed: %s: %s", ref.id, exc.code, exc.message)
    moved = status.fail(ref, exc.code, exc.message)
    if moved:
        metrics.job_done(mode, "failed", exc.code)
    if moved.batch_done:
        on_batch_done(ref.batch_id)
