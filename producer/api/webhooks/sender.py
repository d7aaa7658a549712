"""Send one webhook delivery: sign it as Standard Webhooks does, POST it, say what to do next.

The POST goes through `kandinsky_batch.netguard`: https only, and only to a host whose every
address is public (loopback too when `webhook_allow_loopback` is set), connected to the
address that was checked. Redirects are not followed: a 3xx is a failed try. The receiver's
answer is read up to 64 KiB and dropped.
"""

from __future__ import annotations

import http.client
import logging
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook as Signer

from kandinsky_batch.errors import BadInput
from kandinsky_batch.netguard import ForbiddenAddress, Resolver, check_hop, pinned_https, system_resolver
from kandinsky_batch.settings import Settings
from kandinsky_batch.webhooks import Delivery

log = logging.getLogger(__name__)
USER_AGENT = "kandinsky-batch (webhooks)"
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str = ""  # why not, for the delivery's history
    final: bool = False  # trying again cannot help (a refused address)


def signed_headers(delivery: Delivery, secret: str, body: str, now: datetime | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers; the timestamp is the time of this try."""
    stamp = now or datetime.now(tz=UTC)
    return {
        "webhook-id": delivery.id,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": Signer(secret).sign(delivery.id, stamp, body),
    }


def send(delivery: Delivery, secret: str, settings: Settings, resolve: Resolver = system_resolver) -> Outcome:
    """One try at `delivery`. Never raises for anything the receiver or the network does."""
    body = delivery.body()
    try:
        hop = check_hop(delivery.url, "webhook", resolve, settings.webhook_allow_loopback)
    except ForbiddenAddress as exc:
        # The tenant reads `error` (its dead deliveries): the kind of address, never the address
        # its host resolved to inside our network; the log keeps that.
        log.warning("webhook %s refused: %s", delivery.id, exc.message)
        what = f"resolves to a {exc.kind} address" if exc.kind else "is not allowed"
        return Outcome(
            False, f"refused: the receiver's host {what}; only public ones are sent to", final=True
        )
    except BadInput as exc:  # DNS did not answer: it may later
        return Outcome(False, exc.message)
    headers = {
        **signed_headers(delivery, secret, body),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Connection": "close",
    }
    conn = pinned_https(hop, settings.webhook_timeout_s)
    try:
        conn.request("POST", hop.target, body=body.encode(), headers=headers)
        response = conn.getresponse()
        response.read(MAX_ANSWER_BYTES)
        if 200 <= response.status < 300:
            return Outcome(True)
        if 300 <= response.status < 400:
            return Outcome(False, f"HTTP {response.status}: redirects are not followed")
        return Outcome(False, f"HTTP {response.status} {response.reason}")
    except ssl.SSLCertVerificationError as exc:
        return Outcome(False, f"TLS certificate of {hop.host} is not valid: {exc.verify_message}")
    except (OSError, http.client.HTTPException, UnicodeError) as exc:
        return Outcome(False, f"{type(exc).__name__}: {exc}")
    finally:
        conn.close()


def next_try(delivery: Delivery, settings: Settings, now: float) -> float | None:
    """When to try again after `delivery.attempts` failures, or None once it is past saving."""
    delay = min(
        settings.webhook_retry_base_s * 2 ** max(0, delivery.attempts - 1), settings.webhook_retry_max_s
    )
    at = now + delay
    return at if at - delivery.created <= settings.webhook_give_up_s else None
