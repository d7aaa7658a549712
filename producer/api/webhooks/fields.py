"""A submit's webhook fields, `webhook` (an https URL) and `webhook_events`, as the batch keeps them.

`POST /v1/jobs` takes them beside the spec's fields, `POST /v1/batches` as query parameters; both
are checked by the core's rules (`kandinsky_batch.webhooks.Webhook`) and refused as a 422 naming
the field.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kandinsky_batch.webhooks import Webhook
from producer.api.problems import Problem

WEBHOOK_FIELDS = ("webhook", "webhook_events")


def webhook_from(fields: dict[str, Any], batch: bool, allow_loopback: bool = False) -> str:
    """The JSON of a webhook given as `webhook` (an https URL) and `webhook_events`, or ''."""
    url, events = fields.get("webhook"), fields.get("webhook_events")
    if url is None:
        if events is not None:
            raise Problem(
                422, "Invalid request", "webhook_events: needs a webhook", fields=["webhook_events"]
            )
        return ""
    given: dict[str, Any] = {"url": url, "batch": batch}
    if events is not None:
        given["events"] = events
    try:
        return Webhook.submitted(given, allow_loopback).to_json()
    except ValidationError as exc:
        errors = exc.errors()
        names = ["webhook_events" if e["loc"] and e["loc"][0] == "events" else "webhook" for e in errors]
        detail = "; ".join(f"{n}: {e['msg']}" for n, e in zip(names, errors, strict=True))
        raise Problem(422, "Invalid request", detail, fields=sorted(set(names))) from None
