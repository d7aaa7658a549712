"""The CLI over the HTTP API: with a URL and a key set, the job commands need no Redis or storage.

`open_client` is the one place the CLI picks its SDK. What the API cannot do (name a batch,
strict checking, CSV, manifests) is refused with a usage error rather than dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import redis
from rich.console import Console
from rich.progress import Progress

from kandinsky_batch.redis_client import describe, ping_once
from kandinsky_batch.schema import BatchStatus, JobStatus, Priority
from kandinsky_batch.settings import Settings
from producer.client import Client
from producer.http_client import HttpClient
from producer.submit import SubmitResult, batch_id_for_file
from producer.watch import WatchSummary, summarize

# Commands that run over the HTTP API as well as on Redis; `models` needs neither.
HTTP_COMMANDS = frozenset({"submit", "status", "wait", "cancel", "results", "retry-failed"})
OFFLINE_COMMANDS = frozenset({"models"})
API_VARIABLES = "KANDINSKY_BATCH_API_URL and KANDINSKY_BATCH_API_KEY"


def api_credentials(settings: Settings) -> tuple[str, str] | None:
    """(URL, key) when both API variables are set, None when neither; one alone is refused."""
    url = settings.api_url or ""
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if bool(url) != bool(key):
        raise click.ClickException(f"set both {API_VARIABLES} to use the HTTP API, or neither to use Redis")
    return (url, key) if url else None


def open_client(settings: Settings) -> Client | HttpClient:
    """The one place the CLI picks its SDK: the HTTP API when a URL and key are set, else Redis."""
    credentials = api_credentials(settings)
    return HttpClient(*credentials) if credentials else redis_client(settings)


def redis_client(settings: Settings) -> Client:
    """The SDK on Redis, once one quick ping has found Redis there.

    A stopped Redis or a wrong URL is one line within seconds, rather than after the ~40 s of
    retries the SDK keeps for the rest of the run (a long submit rides out a Redis restart).
    """
    check_redis(settings)
    return Client(settings)


def check_redis(settings: Settings) -> None:
    """One line naming the URL (password masked) when Redis does not answer a single quick ping."""
    try:
        ping_once(settings.redis_url)
    except redis.RedisError as exc:
        raise click.ClickException(describe(exc, settings.redis_url)) from None


def submit_over_http(
    client: HttpClient,
    source: Path | list[dict[str, Any]],
    defaults: dict[str, Any],
    batch_id: str | None,
    strict: bool,
    priority: Priority,
) -> SubmitResult:
    """The API takes JSONL and names batches itself: refuse what it cannot do rather than drop it."""
    if batch_id is not None:
        raise click.UsageError("--batch-id does not work over the HTTP API (it names the batches)")
    if strict:
        raise click.UsageError("--strict does not work over the HTTP API (it sends every valid line)")
    if not isinstance(source, Path):
        return client.submit_batch(source, priority=priority)
    if source.suffix.lower() == ".csv":
        raise click.UsageError("the HTTP API takes JSONL files, not CSV")
    # Keyed by the file and its defaults, as on Redis: submitting it again sends only what was never sent.
    key = batch_id_for_file(source, defaults)
    return client.submit_batch(source, defaults=defaults, priority=priority, idempotency_key=key)


def poll(client: HttpClient, batch_id: str, console: Console | None) -> WatchSummary:
    """A batch followed over the HTTP API, which has no event stream to read: its counts, polled."""
    with Progress(console=console, disable=console is None) as bar:
        task = bar.add_task(batch_id, total=None)

        def show(current: JobStatus | BatchStatus) -> None:
            if isinstance(current, BatchStatus):
                bar.update(task, total=current.total, completed=current.finished)

        final = client.wait(batch_id, on_update=show)
    if not isinstance(final, BatchStatus):
        raise click.ClickException(f"{batch_id} is a job, not a batch")
    return summarize(final)
