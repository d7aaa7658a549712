"""`kandinsky-batch`: one entry point, subcommands for producers, workers and the demo.

`main(argv)` returns the exit code, so tests call it directly. Errors print one
line and exit non-zero; `--json` prints machine-readable output. With an API URL
and key set, the job commands go to the HTTP API (`open_client`) and the rest refuse.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import httpx
import redis
from pydantic import ValidationError
from rich.console import Console

from kandinsky_batch.errors import KandinskyBatchError
from kandinsky_batch.logs import setup_logging
from kandinsky_batch.manifest import encode_line, manifest_line
from kandinsky_batch.redis_client import describe
from kandinsky_batch.schema import BatchStatus, JobState, Mode, Priority
from kandinsky_batch.settings import Settings, describe_settings_error
from producer.cli_api import api, keys
from producer.cli_export import export
from producer.cli_gallery import gallery
from producer.cli_http import (
    API_VARIABLES,
    HTTP_COMMANDS,
    OFFLINE_COMMANDS,
    api_credentials,
    open_client,
    poll,
    redis_client,
    submit_over_http,
)
from producer.cli_local import demo, models, worker
from producer.cli_reproduce import reproduce
from producer.client import Client, JobResult
from producer.http_client import HttpClient
from producer.show import all_succeeded, print_status
from producer.submit import MAX_SEEDS_PER_PROMPT
from producer.tables import PARQUET_SUFFIXES, is_table
from producer.watch import WatchSummary, watch

console = Console(stderr=True, soft_wrap=True)  # messages carry paths and URLs: never wrapped or cut

# CLI flag -> spec field, for one job or as defaults for every line of a file.
SPEC_OPTIONS: list[tuple[str, str, type]] = [
    ("--mode", "mode", click.Choice([m.value for m in Mode])),  # type: ignore[list-item]
    ("--negative-prompt", "negative_prompt", str),
    ("--height", "height", int),
    ("--width", "width", int),
    ("--steps", "num_inference_steps", int),
    ("--prior-steps", "prior_num_inference_steps", int),
    ("--guidance-scale", "guidance_scale", float),
    ("--prior-guidance-scale", "prior_guidance_scale", float),
    ("--num-images", "num_images", int),
    ("--seed", "seed", int),
    ("--image", "image", str),
    ("--mask", "mask", str),
    ("--strength", "strength", float),
]


class SettingsRefused(click.ClickException):
    """Bad `KANDINSKY_BATCH_*` variables: one line each, exit 2 like any other usage error."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        for line in self.message.splitlines():
            click.echo(f"Error: {line}", err=True)


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Batch image generation with Kandinsky 2.1 on Redis, Celery and S3."""
    if ctx.obj is None:
        try:
            ctx.obj = Settings()
        except ValidationError as exc:
            raise SettingsRefused(describe_settings_error(exc)) from None
    setup_logging(_settings(ctx).log_format, "WARNING")
    name = ctx.invoked_subcommand
    if name in OFFLINE_COMMANDS or name in HTTP_COMMANDS:
        return
    # Refused rather than run against Redis: with the API variables set, Redis is not meant to be used.
    if api_credentials(_settings(ctx)) is not None:
        raise click.ClickException(
            f"`{name}` needs Redis and does not run over the HTTP API; "
            f"unset {API_VARIABLES} to run it against Redis"
        )


def _spec_options(func: Any) -> Any:
    for flag, field, kind in reversed(SPEC_OPTIONS):
        func = click.option(flag, field, type=kind, default=None, help=f"spec field {field}")(func)
    return func


@cli.command()
@click.option("--prompt", "prompts", multiple=True, help="A prompt (repeat for several jobs).")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL (one job per line), or CSV or Parquet (one job per row, a prompt column).",
)
@click.option(
    "--prompt-column",
    default="prompt",
    show_default=True,
    help="The prompt's column of a CSV or Parquet file; other columns that are not spec fields are ignored.",
)
@click.option(
    "--seeds-per-prompt",
    type=click.IntRange(1, MAX_SEEDS_PER_PROMPT),
    default=1,
    show_default=True,
    help="K jobs per line, seeds seed .. seed+K-1 (derived from the batch and line if the line has none).",
)
@_spec_options
@click.option("--batch-id", default=None, help="Batch id (default: new, or derived from the file).")
@click.option("--strict", is_flag=True, help="Refuse the whole file if any line is invalid.")
@click.option(
    "--priority",
    type=click.Choice([p.value for p in Priority]),
    default=Priority.NORMAL.value,
    show_default=True,
    help="low: workers take every normal-priority job first (for big datasets).",
)
@click.option(
    "--wait",
    "wait_",
    is_flag=True,
    help="Show progress until every job has finished (exit 1 unless all succeed).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object {batch_id, job_ids, ...}; with --wait, the final summary is its 'batch'.",
)
@click.pass_context
def submit(
    ctx: click.Context,
    prompts: tuple[str, ...],
    path: Path | None,
    prompt_column: str,
    seeds_per_prompt: int,
    batch_id: str | None,
    strict: bool,
    priority: str,
    wait_: bool,
    as_json: bool,
    **fields: Any,
) -> None:
    """Submit jobs: --prompt for one or a few, --file for a batch. Flags are defaults for every line."""
    if prompts and path:
        raise click.UsageError("give --prompt TEXT (repeatable) or --file PATH, not both")
    if not prompts and not path:
        raise click.UsageError("give --prompt TEXT (repeatable) or --file PATH")
    if prompt_column != "prompt" and not (path and is_table(path)):
        raise click.UsageError(
            "--prompt-column is for CSV and Parquet files (a JSONL line names its 'prompt')"
        )
    defaults = {k: v for k, v in fields.items() if v is not None}
    with open_client(_settings(ctx)) as client:
        source: Path | list[dict[str, Any]] = path if path else [{**defaults, "prompt": p} for p in prompts]
        if isinstance(client, HttpClient):
            if seeds_per_prompt != 1 or (path and path.suffix.lower() in PARQUET_SUFFIXES):
                raise click.UsageError("--seeds-per-prompt and Parquet files do not work over the HTTP API")
            result = submit_over_http(client, source, defaults, batch_id, strict, Priority(priority))
        else:
            result = client.submit_batch(
                source,
                batch_id=batch_id,
                defaults=defaults if path else {},
                strict=strict,
                priority=Priority(priority),
                seeds_per_prompt=seeds_per_prompt,
                prompt_column=prompt_column,
            )
        for note in result.notes:
            console.print(note, style="yellow", markup=False, soft_wrap=True)
        where = "row" if path and path.suffix.lower() in PARQUET_SUFFIXES else "line"  # a Parquet file's rows
        for err in result.errors:
            console.print(f"{where} {err.line}: {err.reason}", style="red", markup=False, soft_wrap=True)
        if result.error_count > len(result.errors):
            more = result.error_count - len(result.errors)
            console.print(f"... and {more} more bad {where}s", style="red", markup=False, soft_wrap=True)
        if not result.jobs:
            raise click.ClickException("no job was submitted: no line was valid")
        out: dict[str, Any] = {
            "batch_id": result.batch_id,
            "job_ids": result.job_ids,
            "sent": result.sent,
            "skipped": result.skipped,
            "errors": [{"line": e.line, "reason": e.reason} for e in result.errors],
            "error_count": result.error_count,
        }
        if not as_json:
            click.echo(result.batch_id)
            console.print(
                f"{result.jobs} jobs in batch ({result.sent} sent, "
                f"{result.skipped} already sent), {result.error_count} bad lines"
            )
        summary = None
        if wait_:
            summary = _watch(client, result.batch_id, as_json=as_json, echo=not as_json)
            out["batch"] = summary.as_dict()
        if as_json:  # one JSON object, with the final batch summary under "batch" after --wait
            click.echo(json.dumps(out))
    if result.error_count or (summary is not None and not all_succeeded(summary.batch)):
        ctx.exit(1)


@cli.command()
@click.argument("id_")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, id_: str, as_json: bool) -> None:
    """Status of a job (with its progress) or a batch (counts by state)."""
    with open_client(_settings(ctx)) as client:
        print_status(client.status(id_), as_json)


@cli.command()
@click.argument("id_")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def wait(ctx: click.Context, id_: str, timeout: float | None, as_json: bool) -> None:
    """Wait until a job or a whole batch has finished; exit 1 unless all succeeded."""
    with open_client(_settings(ctx)) as client:
        try:
            final = client.wait(id_, timeout=timeout)
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from None
    print_status(final, as_json)
    ok = all_succeeded(final) if isinstance(final, BatchStatus) else final.state is JobState.SUCCEEDED
    if not ok:
        ctx.exit(1)


@cli.command("watch")
@click.argument("batch_id")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between reads.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--events", is_flag=True, help="Also read the event stream, for an exact images/s.")
@click.option("--json", "as_json", is_flag=True, help="No live bar: one JSON summary line at the end.")
@click.pass_context
def watch_cmd(
    ctx: click.Context, batch_id: str, interval: float, timeout: float | None, events: bool, as_json: bool
) -> None:
    """Live progress of a batch until it is done; exit 1 unless every job succeeded.

    Without a terminal on stdout (or with --json), prints one summary line at the end.
    """
    with redis_client(_settings(ctx)) as client:
        client.status_store.batch(batch_id)  # not found: exit 2 before anything is drawn
        summary = _watch(client, batch_id, as_json, interval_s=interval, timeout_s=timeout, events=events)
    if not all_succeeded(summary.batch):
        ctx.exit(1)


def _watch(
    client: Client | HttpClient, batch_id: str, as_json: bool, echo: bool = True, **options: Any
) -> WatchSummary:
    """Follow a batch until done (a live bar on a terminal); print its summary line unless not `echo`."""
    out = Console()
    live = out.is_terminal and not as_json
    try:
        if isinstance(client, HttpClient):
            summary = poll(client, batch_id, out if live else None)
        else:
            summary = watch(client.status_store, batch_id, console=out if live else None, **options)
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    if echo:
        click.echo(json.dumps(summary.as_dict()) if as_json else summary.line())
    return summary


@cli.command()
@click.argument("id_")
@click.pass_context
def cancel(ctx: click.Context, id_: str) -> None:
    """Cancel a job, or every unfinished job of a batch (running ones stop at their next step)."""
    with open_client(_settings(ctx)) as client:
        n = client.cancel(id_)
    click.echo(f"canceled {n} job{'s' if n != 1 else ''}")


@cli.command()
@click.argument("id_")
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write one JSON line per job (state, seed, outputs, error, spec) to this file.",
)
@click.option(
    "--download",
    "download_to",
    type=click.Path(file_okay=False, path_type=Path),
    help="Copy every output image to DIR/{job_id}/{index}.{ext}.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.pass_context
def results(
    ctx: click.Context, id_: str, manifest_path: Path | None, download_to: Path | None, as_json: bool
) -> None:
    """Outputs of a job or a batch: URIs, presigned URLs for s3://, optional manifest and download."""
    with open_client(_settings(ctx)) as client:
        if manifest_path is not None:
            if isinstance(client, HttpClient):
                raise click.UsageError(
                    "--manifest does not work over the HTTP API, which shows jobs without their spec; "
                    "use --json for one object per job"
                )
            n = 0
            with manifest_path.open("w", encoding="utf-8") as fh:
                for job in client.statuses(id_):
                    fh.write(encode_line(manifest_line(job)))
                    n += 1
            console.print(f"wrote {n} lines to {manifest_path}", markup=False)
        found: Iterable[JobResult] = (
            client.results(id_, download_to)
            if isinstance(client, HttpClient)
            else client.iter_results(id_, download_to)  # one job at a time, for big batches
        )
        for res in found:
            if as_json:
                click.echo(json.dumps(res.model_dump(mode="json"), ensure_ascii=False))
                continue
            line = f"{res.job_id} {res.state.value}"
            if res.error:
                line += f" {res.error.code}: {res.error.message}"
            click.echo(line)
            for url in res.files or res.urls:
                click.echo(f"  {url}")


@cli.command("retry-failed")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def retry_failed(ctx: click.Context, batch_id: str, as_json: bool) -> None:
    """Send a batch's failed jobs again (same spec and seed); exit 1 if some could not be."""
    with open_client(_settings(ctx)) as client:
        res = client.retry_failed(batch_id)
    if as_json:
        not_retried = [{"job_id": j, "reason": r} for j, r in res.not_retried]
        click.echo(json.dumps({"batch_id": batch_id, "retried": res.retried, "not_retried": not_retried}))
    else:
        click.echo(f"retried {len(res.retried)} failed job{'s' if len(res.retried) != 1 else ''}")
        for job, reason in res.not_retried:
            console.print(f"cannot retry {job}: {reason}", style="red", markup=False)
    if res.not_retried:
        ctx.exit(1)


@cli.command("dead-letters")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@click.pass_context
def dead_letters(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Jobs that failed as attempts_exhausted (they kept killing their worker), newest first."""
    shown = 0
    with redis_client(_settings(ctx)) as client:
        for st in client.dead_letters(limit):
            shown += 1
            if as_json:
                click.echo(json.dumps(st.model_dump(mode="json")))
            else:
                reason = st.error.message if st.error else ""
                click.echo(f"{st.job_id}  attempts {st.attempts}  {reason}")
    if not shown:  # on stderr, so that with --json stdout holds JSON lines only (here none)
        console.print("no dead letters", markup=False)


def _redis_url() -> str:
    try:
        return Settings().redis_url
    except ValidationError:
        return "(invalid settings)"


cli.add_command(api)
cli.add_command(worker)
cli.add_command(models)
cli.add_command(demo)
cli.add_command(keys)
cli.add_command(export)
cli.add_command(gallery)
cli.add_command(reproduce)


def main(argv: list[str] | None = None) -> int:
    try:
        rc = cli.main(args=argv, prog_name="kandinsky-batch", standalone_mode=False)
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
        click.echo(f"error: {describe(exc, _redis_url())}", err=True)
        return 1
    except httpx.RequestError as exc:
        click.echo(
            f"error: cannot reach the HTTP API at {exc.request.url}: {str(exc) or type(exc).__name__}",
            err=True,
        )
        return 1
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
