"""What a webhook is: the receiver's https URL, the events it wants, and one pending delivery.

A webhook belongs to a batch (a job submitted alone is a batch of one), is kept in the batch's
hash, and is read by the dispatcher for each status change of the batch's jobs. The URL is
checked here for its form; the address check (no loopback, private, link-local or metadata
address) happens at each delivery, after DNS, in `kandinsky_batch.netguard`.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kandinsky_batch.netguard import forbidden_reason

MAX_URL_CHARS = 2048


class WebhookEvent(StrEnum):
    STARTED = "started"  # a job began running
    PROGRESS = "progress"  # a job made progress (at most one per job per 2 s)
    COMPLETED = "completed"  # a job finished (succeeded, failed or canceled); a batch's last job too


class Webhook(BaseModel):
    """A receiver and what it is told. `batch`: also `batch.completed` when every job has finished."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(max_length=MAX_URL_CHARS)
    events: frozenset[WebhookEvent] = frozenset({WebhookEvent.COMPLETED})
    batch: bool = False

    @field_validator("url")
    @classmethod
    def _https(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme.lower() != "https":
            raise ValueError("a webhook URL must be https://")
        if not parts.hostname:
            raise ValueError("a webhook URL needs a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("a webhook URL must not carry credentials")
        try:
            _ = parts.port
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError as exc:
            if "port" in str(exc).lower():
                raise ValueError(f"a webhook URL has an invalid port: {exc}") from None
            return url  # a host name: its addresses are checked at each delivery
        reason = forbidden_reason(str(literal))
        if reason is not None and reason != "loopback":  # loopback is the dispatcher's setting
            raise ValueError(f"a webhook URL must not point at a {reason} address")
        return url

    def to_json(self) -> str:
        return json.dumps({"url": self.url, "events": sorted(self.events), "batch": self.batch})

    @classmethod
    def from_json(cls, text: str | bytes) -> Webhook | None:
        """The webhook stored with a batch, or None if what is stored is not one (never raises)."""
        try:
            return cls.model_validate_json(text)
        except ValueError:
            return None


@dataclass
class Delivery:
    """One webhook message, tried until the receiver answers 2xx or `give_up_s` has passed.

    `id` is the Standard Webhooks `webhook-id`: the same on every try, so a receiver can
    drop repeats.
    """

    id: str
    tenant: str
    url: str
    type: str  # job.started | job.progress | job.completed | batch.completed
    data: dict[str, Any]
    created: float
    attempts: int = 0
    last_error: str = ""
    history: list[str] = field(default_factory=list)  # the last few outcomes, newest last

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Delivery:
        return cls(**json.loads(text))

    def body(self) -> str:
        """The signed body: the event's type, when it happened, and its data."""
        return json.dumps({"type": self.type, "timestamp": self.created, "data": self.data})
