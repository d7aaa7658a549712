"""Webhook rules that need no server: URL checks, address refusals after DNS, signing, backoff."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook as Verifier

from kandinsky_batch.settings import Settings
from kandinsky_batch.webhooks import Delivery, Webhook, WebhookEvent
from producer.api.webhooks.sender import next_try, send, signed_headers

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def delivery(**fields: object) -> Delivery:
    values: dict[str, object] = {
        "id": "msg_1",
        "tenant": "acme",
        "url": "https://hooks.example.com/in",
        "type": "job.completed",
        "data": {"job_id": "b-0"},
        "created": 1000.0,
    }
    return Delivery(**{**values, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    ["http://example.com/", "ftp://example.com/", "https:///nohost", "https://u:p@example.com/",
     "https://10.1.2.3/", "https://[::ffff:192.168.0.1]/", "https://169.254.169.254/", "https://example.com:99999/"],
)  # fmt: skip
def test_a_webhook_url_must_be_https_to_a_public_host(url: str) -> None:
    with pytest.raises(ValidationError):
        Webhook(url=url)


# Loopback, unspecified and IPv4-in-IPv6 loopback in the spellings a resolver accepts, no DNS needed.
LITERAL_LOOPBACK = [
    "https://127.0.0.1/hook", "https://[::1]/", "https://localhost/", "https://localhost./",
    "https://LOCALHOST/", "https://api.localhost:8443/", "https://127.1/", "https://2130706433/",
    "https://0x7f000001/", "https://0177.0.0.1/", "https://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/",
]  # fmt: skip
NEVER_ALLOWED = ["https://0.0.0.0/", "https://0/", "https://[::ffff:127.0.0.1]/", "https://[::]/",
                 "https://10.1/", "https://[fe80::1%25eth0]/", "https://0xa9fea9fe/"]  # fmt: skip


@pytest.mark.parametrize("url", LITERAL_LOOPBACK + NEVER_ALLOWED)
def test_a_literal_non_public_host_in_any_spelling_is_refused_at_submit(url: str) -> None:
    with pytest.raises(ValidationError, match="must not point at a"):
        Webhook.submitted({"url": url}, allow_loopback=False)
    with pytest.raises(ValidationError, match="must not point at a"):
        Webhook(url=url)  # no setting given: refused too


@pytest.mark.parametrize("url", LITERAL_LOOPBACK)
def test_loopback_hosts_pass_at_submit_only_with_the_setting(url: str) -> None:
    assert Webhook.submitted({"url": url}, allow_loopback=True).url == url


@pytest.mark.parametrize("url", NEVER_ALLOWED)
def test_other_non_public_hosts_are_refused_even_with_the_loopback_setting(url: str) -> None:
    with pytest.raises(ValidationError, match="must not point at a"):
        Webhook.submitted({"url": url}, allow_loopback=True)


@pytest.mark.parametrize("url", ["https://hooks.example.com/kb", "https://8.8.8.8/", "https://[2001:4860::8888]:8443/",
                                 "https://127.0.0.1.example.com/", "https://localhost.example.com/"])  # fmt: skip
def test_public_addresses_and_names_that_need_dns_pass_at_submit(url: str) -> None:
    assert Webhook.submitted({"url": url}, allow_loopback=False).url == url


def test_a_webhook_keeps_its_events_and_reads_back_what_it_stored() -> None:
    hook = Webhook(url="https://example.com/h", events=frozenset({WebhookEvent.STARTED}), batch=True)
    assert Webhook.from_json(hook.to_json()) == hook
    assert Webhook.from_json("{garbage") is None
    assert Webhook.from_json('{"url": "http://x"}') is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [("10.0.0.5", "private"), ("127.0.0.1", "loopback"), ("169.254.169.254", "cloud metadata"),
     ("fe80::1", "link-local"), ("::ffff:10.0.0.1", "private")],
)  # fmt: skip
def test_a_host_that_resolves_to_a_forbidden_address_is_refused_for_good(address: str, reason: str) -> None:
    outcome = send(delivery(), SECRET, Settings(), resolve=lambda host: [address])
    assert not outcome.delivered and outcome.final and reason in outcome.error


def test_loopback_passes_the_check_only_with_its_setting() -> None:
    allowed = Settings(webhook_allow_loopback=True, webhook_timeout_s=2)
    # Nothing listens on port 9 of loopback: the check passes and the connection is what fails.
    outcome = send(delivery(url="https://127.0.0.1:9/"), SECRET, allowed)
    assert not outcome.delivered and not outcome.final
    outcome = send(delivery(url="https://127.0.0.1:9/"), SECRET, Settings())
    assert outcome.final and "loopback" in outcome.error


def test_a_failed_lookup_is_tried_again_later() -> None:
    def no_dns(host: str) -> list[str]:
        raise OSError("Name or service not known")

    outcome = send(delivery(), SECRET, Settings(), resolve=no_dns)
    assert not outcome.delivered and not outcome.final and "resolve" in outcome.error


def test_signatures_verify_with_the_standard_library_and_the_same_secret_only() -> None:
    sent = delivery()
    body = sent.body()
    headers = signed_headers(sent, SECRET, body, now=datetime.now(tz=UTC))
    assert Verifier(SECRET).verify(body, headers)["data"] == {"job_id": "b-0"}
    with pytest.raises(Exception, match="signature"):
        Verifier("whsec_" + "B" * 43).verify(body, headers)
    with pytest.raises(Exception, match="signature"):
        Verifier(SECRET).verify(body.replace("b-0", "b-1"), headers)


def test_backoff_doubles_up_to_its_cap_and_stops_at_the_give_up_time() -> None:
    settings = Settings(webhook_retry_base_s=5, webhook_retry_max_s=60, webhook_give_up_s=600)
    waits = []
    for attempts in range(1, 7):
        at = next_try(delivery(attempts=attempts), settings, now=1000.0)
        assert at is not None
        waits.append(at - 1000.0)
    assert waits == [5, 10, 20, 40, 60, 60]
    assert next_try(delivery(attempts=3), settings, now=1000.0 + 590) is None  # past 600 s after creation


def test_a_refused_delivery_names_the_kind_of_address_but_never_the_address_it_resolved_to() -> None:
    # Given a receiver's name that resolves inside our network
    outcome = send(
        delivery(url="https://hooks.example.com/"), SECRET, Settings(), resolve=lambda host: ["10.1.2.3"]
    )
    # Then the tenant-visible error says what kind of address, and not which
    assert outcome.final and "private" in outcome.error and "10.1.2.3" not in outcome.error
