"""What is refused at the door, as in production (`WEBHOOK_ALLOW_LOOPBACK` off): webhooks to a
loopback, private or link-local host in any literal spelling, and ids that are not ids (a batch
id with a trailing newline, a job index in other digits). A real uvicorn process and Redis, no
worker; and the CLI's own submit path for a batch id."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kandinsky_batch.errors import NotFound
from kandinsky_batch.schema import Mode
from kandinsky_batch.settings import Settings
from producer.cli.main import main
from producer.client import Client
from tests.integration.conftest import auth, free_port

pytestmark = pytest.mark.integration

BODY = {"prompt": "a quiet harbour", "height": 64, "width": 64}
LITERAL_HOSTS = [
    "https://127.0.0.1/hook", "https://[::1]/hook", "https://localhost/hook", "https://0.0.0.0/",
    "https://127.1/", "https://[::ffff:127.0.0.1]/", "https://2130706433/", "https://0x7f000001/",
    "https://localhost./", "https://LOCALHOST/", "https://10.0.0.7:8443/", "https://169.254.169.254/",
]  # fmt: skip


@pytest.fixture(scope="module")
def worker() -> Iterator[None]:
    yield None


@pytest.fixture(scope="module")
def api_settings(module_settings: Settings) -> Settings:
    update = {"api_port": free_port(), "webhook_allow_loopback": False}
    return module_settings.model_copy(update=update)


@pytest.fixture(scope="module")
def sdk(api_settings: Settings) -> Iterator[Client]:
    with Client(api_settings) as client:
        yield client


def queued(sdk: Client) -> int:
    return sdk.status_store.queue_length(sdk.settings.queue_for(Mode.TEXT2IMG))


def assert_refused_naming_webhook(answer: httpx.Response) -> None:
    assert answer.status_code == 422, answer.text
    problem: dict[str, Any] = answer.json()
    assert problem["fields"] == ["webhook"] and "must not point at a" in problem["detail"], problem


@pytest.mark.parametrize("url", LITERAL_HOSTS)
def test_a_webhook_to_a_literal_non_public_host_is_refused_at_submit(
    server: str, acme_key: str, sdk: Client, url: str
) -> None:
    before = queued(sdk)
    job = httpx.post(f"{server}/v1/jobs", json={**BODY, "webhook": url}, headers=auth(acme_key), timeout=30)
    assert_refused_naming_webhook(job)
    batch = httpx.post(
        f"{server}/v1/batches",
        params={"webhook": url},
        content=b'{"prompt": "a"}\n',
        headers=auth(acme_key),
        timeout=30,
    )
    assert_refused_naming_webhook(batch)
    assert queued(sdk) == before


def test_a_webhook_to_a_name_that_needs_dns_is_taken_at_submit(server: str, acme_key: str) -> None:
    body = {**BODY, "webhook": "https://hooks.example.com/kb"}
    answer = httpx.post(f"{server}/v1/jobs", json=body, headers=auth(acme_key), timeout=30)
    assert answer.status_code == 202, answer.text


def test_ids_with_a_newline_or_other_digits_are_not_found(server: str, acme_key: str) -> None:
    answer = httpx.post(f"{server}/v1/jobs", json=BODY, headers=auth(acme_key), timeout=30)
    assert answer.status_code == 202, answer.text
    job: str = answer.json()["job_id"]
    batch = job.rpartition("-")[0]
    assert httpx.get(f"{server}/v1/batches/{batch}", headers=auth(acme_key), timeout=30).status_code == 200
    assert httpx.get(f"{server}/v1/jobs/{job}", headers=auth(acme_key), timeout=30).status_code == 200
    for path in (
        f"/v1/batches/{batch}%0A",
        f"/v1/batches/{batch}%0A/jobs",
        f"/v1/batches/{batch}%0D%0A/events",
        f"/v1/jobs/{job}%0A",
        f"/v1/jobs/{batch}%0A-0",
        f"/v1/jobs/{batch}-00",
        f"/v1/jobs/{batch}-%C2%B2",  # '²': a digit to str.isdigit, not to int()
        f"/v1/jobs/{batch}-%D9%A0",  # Arabic-Indic zero: int() reads it as 0
    ):
        got = httpx.get(f"{server}{path}", headers=auth(acme_key), timeout=30)
        assert got.status_code == 404, (path, got.status_code, got.text)
    canceled = httpx.post(f"{server}/v1/batches/{batch}%0A/cancel", headers=auth(acme_key), timeout=30)
    assert canceled.status_code == 404, canceled.text


def test_the_cli_refuses_a_batch_id_with_a_trailing_newline_and_queues_nothing(
    api_settings: Settings, sdk: Client, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in api_settings.as_env().items():
        monkeypatch.setenv(name, value)
    before = queued(sdk)
    capsys.readouterr()
    assert main(["submit", "--prompt", "a fox", "--batch-id", "run-7\n"]) == 1
    assert "batch_id 'run-7\\n' must match" in capsys.readouterr().err
    assert queued(sdk) == before
    with pytest.raises(NotFound):
        sdk.status_store.batch("run-7\n")
    assert main(["submit", "--prompt", "a fox", "--batch-id", "run-7"]) == 0  # the same id, without it
    assert queued(sdk) == before + 1
