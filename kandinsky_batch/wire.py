"""The queue message format: validate specs, build messages, and read them back.

Both sides use these, so a spec is checked by the same rules at submit (the caller sees which
field is wrong) and at the worker (a bad message fails its jobs with a code, never the worker).
docs/message-format.md describes the format for clients in other languages.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from kandinsky_batch.errors import BadMessage, InvalidSpec
from kandinsky_batch.keys import BATCH_ID, MAX_INDEX, MESSAGE_VERSION, is_batch_id, is_index
from kandinsky_batch.schema import MAX_SEED, JobSpec
from kandinsky_batch.settings import Settings


def format_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field, e.g. `height: must be a multiple of 64`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "spec"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "finite_number" or _not_finite(err.get("input")):
            value = err.get("input")
            named = "NaN" if value != value else ("infinity" if value > 0 else "minus infinity")
            msg = f"must be a finite number, not {named}"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def _not_finite(value: object) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def validate_spec(data: Any, settings: Settings) -> JobSpec:
    """Validate one job against the contract and the operator's limits; raise InvalidSpec."""
    if not isinstance(data, dict):
        raise InvalidSpec(f"a job must be a JSON object, not {type(data).__name__}")
    try:
        return JobSpec.model_validate(data, context={"max_side": settings.max_side})
    except ValidationError as exc:
        raise InvalidSpec(format_validation_error(exc)) from None


def check_batch_id(batch_id: object) -> str:
    """The batch id if it follows the rules submit uses (it becomes a storage folder); else InvalidSpec."""
    if not is_batch_id(batch_id):
        raise InvalidSpec(
            f"batch_id {batch_id!r} must match {BATCH_ID.pattern} (letters, digits, '_', '.', '-')"
        )
    return str(batch_id)


def build_message(batch_id: str, jobs: Sequence[tuple[int, JobSpec]]) -> dict[str, Any]:
    """The wire form of `(index, spec)` jobs (see message_from_wires)."""
    return message_from_wires(batch_id, [(index, spec.wire()) for index, spec in jobs])


def message_from_wires(batch_id: str, jobs: Sequence[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The wire form: fields every job shares once in `shared`, the rest per job."""
    wires = [wire for _, wire in jobs]
    shared = dict(wires[0])
    for wire in wires[1:]:
        shared = {k: v for k, v in shared.items() if k in wire and wire[k] == v}
    return {
        "v": MESSAGE_VERSION,
        "batch_id": batch_id,
        "shared": shared,
        "jobs": [
            {"index": index, "spec": {k: v for k, v in wire.items() if k not in shared}}
            for index, wire in jobs
        ],
    }


@dataclass(frozen=True)
class Entry:
    """One job of a received message, before its spec is validated."""

    index: int
    data: dict[str, Any] | None  # shared fields and its own; None when the entry has no spec object
    seed: int  # the caller's valid seed, else one drawn now (the store keeps the first one it sees)


@dataclass(frozen=True)
class Parsed:
    """A received message: its batch, its distinct entries, and why it is bad (if it is)."""

    batch_id: str
    entries: list[Entry]
    problem: str | None  # set: every entry fails with bad_message


def parse_message(message: object) -> Parsed:
    """Read a message's jobs; BadMessage if it names no batch or jobs (nothing to fail then)."""
    if not isinstance(message, dict):
        raise BadMessage(f"a message is a JSON object, not {type(message).__name__}")
    batch_id, raw = message.get("batch_id"), message.get("jobs")
    if not isinstance(batch_id, str) or not batch_id or not isinstance(raw, list):
        raise BadMessage(f"a message names its batch_id and jobs; got keys {sorted(map(str, message))}")
    if not is_batch_id(batch_id):
        raise BadMessage(f"batch_id {batch_id[:100]!r} does not match {BATCH_ID.pattern}")
    shared = message.get("shared", {})
    valid = [e for e in raw if isinstance(e, dict) and is_index(e.get("index"))]
    indexed = list({e["index"]: e for e in valid}.values())
    entries = []
    for e in indexed:
        spec = e.get("spec")
        data = {**shared, **spec} if isinstance(spec, dict) and isinstance(shared, dict) else None
        entries.append(Entry(e["index"], data, _seed(spec, shared)))
    return Parsed(batch_id, entries, _problem(message, raw, indexed))


def _problem(message: dict[str, Any], raw: list[Any], indexed: list[dict[str, Any]]) -> str | None:
    if message.get("v") != MESSAGE_VERSION:
        return f"unsupported message version {message.get('v')!r} (expected {MESSAGE_VERSION})"
    if not isinstance(message.get("shared", {}), dict):
        return "'shared' must be an object"
    if len(indexed) != len(raw):
        # An entry without an index, or two with the same one.
        return f"every entry of 'jobs' must be an object with its own integer 'index' in 0..{MAX_INDEX}"
    if any(not isinstance(e.get("spec"), dict) for e in indexed):
        return "every entry of 'jobs' needs a 'spec' object"
    return None


def _seed(spec: object, shared: object) -> int:
    """The caller's seed if the message carries a valid one, else a new one fixed now."""
    for source in (spec, shared):
        if isinstance(source, dict):
            seed = source.get("seed")
            if isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED:
                return seed
    return secrets.randbelow(MAX_SEED + 1)
