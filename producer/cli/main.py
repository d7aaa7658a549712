"""`kandinsky-batch`: one entry point, subcommands for producers, workers and the demo.

`main(argv)` returns the exit code, so tests call it directly. Errors print one line and exit
non-zero; `--json` prints machine-readable output. Every command is registered here from its
module's `COMMANDS`; a new command in an existing module needs no change here.
"""

from __future__ import annotations

import click
import httpx
import redis
from pydantic import ValidationError

from kandinsky_batch.errors import KandinskyBatchError
from kandinsky_batch.logs import setup_logging
from kandinsky_batch.redis_client import describe
from kandinsky_batch.settings import Settings, describe_settings_error
from producer.cli import api, export, gallery, jobs, local, reproduce
from producer.cli.base import CliContext


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Batch image generation with Kandinsky 2.1 on Redis, Celery and S3."""
    context = ctx.ensure_object(CliContext)
    setup_logging(context.settings.log_format, "WARNING")  # the settings, read here once


for module in (jobs, api, local, export, gallery, reproduce):
    for command in module.COMMANDS:
        cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    context = CliContext()
    try:
        rc = cli.main(args=argv, prog_name="kandinsky-batch", standalone_mode=False, obj=context)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except KandinskyBatchError as exc:
        hint = " (check KANDINSKY_BATCH_API_KEY)" if exc.code == "http_401" else ""
        click.echo(f"error: {exc.code}: {exc.message}{hint}", err=True)
        return 2 if exc.code == "not_found" else 1
    except ValidationError as exc:
        if exc.title == Settings.__name__:
            click.echo(describe_settings_error(exc), err=True)
        else:
            found = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            click.echo(f"error: invalid {exc.title}: {found}", err=True)
        return 2
    except redis.RedisError as exc:
        click.echo(f"error: {describe(exc, context.redis_url())}", err=True)
        return 1
    except httpx.RequestError as exc:
        click.echo(
            f"error: cannot reach the HTTP API at {exc.request.url}: {str(exc) or type(exc).__name__}",
            err=True,
        )
        return 1
    return rc if isinstance(rc, int) else 0
