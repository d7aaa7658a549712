"""Read one queue message into jobs, validating every spec a second time.

A message that is not our format fails the jobs it names (if any can be named)
with `bad_message`; an invalid spec fails only its own job. Nothing here raises
out to the worker.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from producer.errors import InvalidSpec, UnsupportedMode
from producer.keys import MAX_INDEX, MESSAGE_VERSION, job_id
from producer.schema import MAX_SEED, Priority
from producer.settings import Settings
from producer.status import Created, StatusStore
from producer.submit import validate_spec
from worker.engine import Job

log = logging.getLogger(__name__)


def parse_message(
    message: dict[str, Any], settings: Settings, status: StatusStore, priority: Priority = Priority.NORMAL
) -> list[Job]:
    """The runnable jobs of a message; the others are recorded as failed."""
    batch_id = message.get("batch_id")
    entries = message.get("jobs")
    if not isinstance(batch_id, str) or not batch_id or not isinstance(entries, list):
        log.error("dropping a message that names no batch_id/jobs: keys %s", sorted(message))
        return []
    valid = [e for e in entries if isinstance(e, dict) and _is_index(e.get("index"))]
    indexed = list({e["index"]: e for e in valid}.values())
    # Each job gets its status hash now; jobs sent straight onto the queue (open format) have
    # no status yet, and get it here too. A job that finished long ago (expired) is left alone.
    seeds = {e["index"]: _seed(e.get("spec"), message.get("shared")) for e in indexed}
    stored = status.receive(batch_id, list(seeds.items()), priority)
    gone = {index for index, (flag, _) in zip(seeds, stored, strict=True) if flag is Created.GONE}
    seeds = {index: seed for index, (_, seed) in zip(seeds, stored, strict=True)}
    if gone:
        log.info("batch %s: %d jobs finished and expired before; not run again", batch_id, len(gone))

    problem = _envelope_problem(message, entries, indexed)
    if problem:
        for e in indexed:
            status.fail(job_id(batch_id, e["index"]), "bad_message", problem)
        log.error("bad message for batch %s: %s", batch_id, problem)
        return []

    jobs = []
    served = set(settings.modes)
    for e in indexed:
        if e["index"] in gone:
            continue
        jid = job_id(batch_id, e["index"])
        data = {**message["shared"], **e["spec"]}
        if data.get("seed") is None:  # a given seed is validated like any field; none: the stored one
            data["seed"] = seeds[e["index"]]
        try:
            spec = validate_spec(data, settings)
            if spec.mode not in served:
                raise UnsupportedMode(
                    f"this worker serves {', '.join(m.value for m in served)}, not {spec.mode}"
                )
        except (InvalidSpec, UnsupportedMode) as exc:
            status.fail(jid, exc.code, exc.message)
            continue
        jobs.append(Job(jid, batch_id, spec))
    return jobs


def _envelope_problem(
    message: dict[str, Any], entries: list[Any], indexed: list[dict[str, Any]]
) -> str | None:
    if message.get("v") != MESSAGE_VERSION:
        return f"unsupported message version {message.get('v')!r} (expected {MESSAGE_VERSION})"
    if not isinstance(message.get("shared", {}), dict):
        return "'shared' must be an object"
    if len(indexed) != len(entries):
        # An entry without an index, or two with the same one.
        return f"every entry of 'jobs' must be an object with its own integer 'index' in 0..{MAX_INDEX}"
    if any(not isinstance(e.get("spec"), dict) for e in indexed):
        return "every entry of 'jobs' needs a 'spec' object"
    message.setdefault("shared", {})
    return None


def _is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INDEX


def _seed(spec: object, shared: object) -> int:
    """The caller's seed if the message carries a valid one, else a new one fixed now."""
    for source in (spec, shared):
        if isinstance(source, dict):
            seed = source.get("seed")
            if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED:
                return seed
    return secrets.randbelow(MAX_SEED + 1)
