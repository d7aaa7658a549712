"""The CLI's HTTP API commands: `api` serves it, `keys create|list|revoke` manage its keys."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import click

from kandinsky_batch.store.apikeys import MAX_WEIGHT, ApiKeys
from producer.cli.base import CliContext, console, pass_cli
from producer.client import Client


@click.command()
@pass_cli
def api(context: CliContext) -> None:
    """Serve the HTTP API on KANDINSKY_BATCH_API_HOST:API_PORT (uvicorn; API_WORKERS processes)."""
    import functools

    import uvicorn

    from kandinsky_batch.logs import logging_config
    from producer.api.nodelay import NoDelayHttpToolsProtocol

    s = context.redis_settings()
    options: dict[str, Any] = {
        "host": s.api_host,
        "port": s.api_port,
        "timeout_graceful_shutdown": 30,
        # Slow or huge headers, idle keep-alive connections and a flood of connections are cut
        # off; the partial pickles, so every worker process of `serve` gets the same protocol.
        "http": functools.partial(
            NoDelayHttpToolsProtocol,
            header_timeout_s=s.api_header_timeout_s,
            max_header_bytes=s.api_max_header_bytes,
        ),
        "timeout_keep_alive": s.api_keep_alive_s,
        "limit_concurrency": s.api_max_connections,  # past it, a new request gets 503
        "loop": "uvloop",
        "access_log": s.api_access_log,
        "log_config": logging_config(s.log_format),  # applied in every uvicorn worker process too
    }
    if s.api_workers == 1:
        from producer.api.app import create_app

        uvicorn.run(create_app(s), **options)
    else:  # each worker process listens on its own socket and builds its app from the environment
        from producer.api.workers import serve

        serve(options, s.api_workers)


@click.group()
def keys() -> None:
    """API keys for the HTTP API: one per client, each of one tenant."""


@keys.command("create")
@click.option("--tenant", required=True, help="Whose jobs the key submits and sees.")
@click.option("--rate", default="20/s", show_default=True, help="Requests per second, as N/s.")
@click.option(
    "--max-queued",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Unfinished jobs of the tenant.",
)
@click.option(
    "--weight",
    type=click.IntRange(1, MAX_WEIGHT),
    default=None,
    help="The tenant's share of the workers against other tenants' (default: as it was, 1 at first).",
)
@click.option("--admin", is_flag=True, help="May read every tenant's jobs and usage.")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def keys_create(
    context: CliContext,
    tenant: str,
    rate: str,
    max_queued: int,
    weight: int | None,
    admin: bool,
    as_json: bool,
) -> None:
    """Make a key and print it once: only its hash is kept."""
    per_s = float(rate.removesuffix("/s"))
    with context.redis() as client:
        try:
            record, secret = _api_keys(client).create(
                tenant, admin=admin, rate_per_s=per_s, max_queued=max_queued, weight=weight
            )
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"key": secret, **asdict(record)}))
    else:
        click.echo(secret)
        console.print(f"key {record.id} for tenant {record.tenant}: shown once, store it now", markup=False)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def keys_list(context: CliContext, as_json: bool) -> None:
    """Every key's id, tenant, limits and its tenant's weight (never the keys themselves)."""
    with context.redis() as client:
        store = _api_keys(client)
        weights = store.weights()
        for record in store.all():
            weight = weights.get(record.tenant, 1)
            if as_json:
                click.echo(json.dumps({**asdict(record), "weight": weight}))
            else:
                admin = " admin" if record.admin else ""
                click.echo(
                    f"{record.id}  {record.tenant}  {record.rate_per_s:g}/s  max {record.max_queued}"
                    f"  weight {weight}{admin}"
                )


@keys.command("weight")
@click.argument("tenant")
@click.argument("weight", type=click.IntRange(1, MAX_WEIGHT))
@pass_cli
def keys_weight(context: CliContext, tenant: str, weight: int) -> None:
    """Set TENANT's weight in the fair share of the queues, at once (`-`: jobs sent without a tenant)."""
    with context.redis() as client:
        try:
            _api_keys(client).set_weight(tenant, weight)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    click.echo(f"tenant {tenant}: weight {weight}")


@keys.command("revoke")
@click.argument("key_id")
@pass_cli
def keys_revoke(context: CliContext, key_id: str) -> None:
    """Revoke a key by its id: it stops working at once."""
    with context.redis() as client:
        if not _api_keys(client).revoke(key_id):
            raise click.ClickException(f"no key with id {key_id!r}")
    click.echo(f"revoked {key_id}")


def _api_keys(client: Client) -> ApiKeys:
    return ApiKeys(client.redis, client.status_store.keys)


COMMANDS = (api, keys)
