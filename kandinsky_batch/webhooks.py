"""What a webhook is: the receiver's https URL, the events it wants, and one pending delivery.

A webhook belongs to a batch (a job submitted alone is a batch of one), is kept in the batch's
hash, and is read by the dispatcher for each status change of the batch's jobs. The URL is
checked here for its form, and a host that needs no DNS to be known as loopback, private,
link-local or metadata (an IP address in any spelling, `localhost`) is refused at submit; every
host is checked again at each delivery, after DNS, in `kandinsky_batch.netguard`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from kandinsky_batch.netguard import IPAddress, forbidden_reason

MAX_URL_CHARS = 2048
ALLOW_LOOPBACK = "allow_loopback"  # validation context: the `webhook_allow_loopback` setting
# Names that are loopback without asking DNS (RFC 6761, and the usual /etc/hosts entries).
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


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
    def _https(cls, url: str, info: ValidationInfo) -> str:
        parts = urlsplit(url)
        if parts.scheme.lower() != "https":
            raise ValueError("a webhook URL must be https://")
        if not parts.hostname:
            raise ValueError("a webhook URL needs a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("a webhook URL must not carry credentials")
        try:
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"a webhook URL has an invalid port: {exc}") from None
        reason = host_refusal(parts.hostname)
        allow_loopback = bool((info.context or {}).get(ALLOW_LOOPBACK))
        if reason is not None and not (reason == "loopback" and allow_loopback):
            raise ValueError(f"a webhook URL must not point at a {reason} address")
        return url

    @classmethod
    def submitted(cls, data: dict[str, Any], allow_loopback: bool) -> Webhook:
        """A webhook given at submit; a loopback host passes only with `webhook_allow_loopback`."""
        return cls.model_validate(data, context={ALLOW_LOOPBACK: allow_loopback})

    def to_json(self) -> str:
        return json.dumps({"url": self.url, "events": sorted(self.events), "batch": self.batch})

    @classmethod
    def from_json(cls, text: str | bytes) -> Webhook | None:
        """The webhook stored with a batch, or None if what is stored is not one (never raises)."""
        try:
            # Stored at submit, under the setting of then; each delivery checks it under today's.
            return cls.model_validate_json(text, context={ALLOW_LOOPBACK: True})
        except ValueError:
            return None


def host_refusal(hostname: str) -> str | None:
    """Why a webhook host is refused without DNS ("loopback", "private", ...), or None.

    An IP address in any spelling a resolver accepts (`127.1`, `2130706433`, `0x7f000001`,
    fullwidth digits) is judged as that address; `localhost` and its kin (any case, trailing
    dot) as loopback. Any other name needs DNS, so it waits for the check at delivery.
    """
    address = _literal_address(hostname)
    try:
        name = hostname.encode("idna").decode("ascii").lower().rstrip(".")
    except UnicodeError:
        if address is None:
            raise ValueError(f"a webhook URL has an invalid host name {hostname!r}") from None
        name = hostname
    if address is None:
        address = _literal_address(name)  # fullwidth digits and dots read as ASCII
    if address is not None:
        return forbidden_reason(str(address))
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return "loopback"
    return None


def _literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, as `ipaddress` reads it or, for IPv4's short, decimal, octal
    and hex forms, as the C resolver does (`inet_aton`); None for a name."""
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host)
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
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
