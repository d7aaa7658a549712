"""The job commands: `submit`, `status`, `wait`, `watch`, `cancel`, `results`, `retry-failed` and
`dead-letters`.

They talk to the SDK their context gives (`CliContext.client()`: on Redis, or over the HTTP API
with its URL and key set); `watch` and `dead-letters` need Redis itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from kandinsky_batch.manifest import encode_line
from kandinsky_batch.schema import BatchStatus, JobState, Priority
from producer.cli.base import CliContext, console, pass_cli, refused, spec_options
from producer.lines import PARQUET_SUFFIXES, is_table
from producer.sdk import NotOverHttp, Sdk
from producer.show import all_succeeded, print_status
from producer.submit import MAX_SEEDS_PER_PROMPT
from producer.watch import EventCounter, WatchSummary, watch


@click.command()
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
@spec_options
@click.option("--batch-id", default=None, help="Batch id (default: new, or derived from the file).")
@click.option("--strict", is_flag=True, help="Refuse the whole file if any line is invalid.")
@click.option(
    "--priority",
    type=click.Choice([p.value for p in Priority]),
    default=Priority.NORMAL.value,
    show_default=True,
    help="high: before every normal job (interactive); low: after every normal job (big datasets).",
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
@pass_cli
@click.pass_context
def submit(
    ctx: click.Context,
    context: CliContext,
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
    with context.client() as client:
        source: Path | list[dict[str, Any]] = path if path else [{**defaults, "prompt": p} for p in prompts]
        try:
            result = client.submit_batch(
                source,
                batch_id=batch_id,
                defaults=defaults if path else {},
                strict=strict,
                priority=Priority(priority),
                seeds_per_prompt=seeds_per_prompt,
                prompt_column=prompt_column,
            )
        except NotOverHttp as exc:
            raise refused(exc) from None
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
            summary = follow(client, result.batch_id, as_json=as_json, echo=not as_json)
            out["batch"] = summary.as_dict()
        if as_json:  # one JSON object, with the final batch summary under "batch" after --wait
            click.echo(json.dumps(out))
    if result.error_count or (summary is not None and not all_succeeded(summary.batch)):
        ctx.exit(1)


@click.command()
@click.argument("id_")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
def status(context: CliContext, id_: str, as_json: bool) -> None:
    """Status of a job (with its progress) or a batch (counts by state)."""
    with context.client() as client:
        print_status(client.status(id_), as_json)


@click.command()
@click.argument("id_")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
@click.pass_context
def wait(ctx: click.Context, context: CliContext, id_: str, timeout: float | None, as_json: bool) -> None:
    """Wait until a job or a whole batch has finished; exit 1 unless all succeeded."""
    with context.client() as client:
        try:
            final = client.wait(id_, timeout=timeout)
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from None
    print_status(final, as_json)
    ok = all_succeeded(final) if isinstance(final, BatchStatus) else final.state is JobState.SUCCEEDED
    if not ok:
        ctx.exit(1)


@click.command("watch")
@click.argument("batch_id")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between reads.")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--events", is_flag=True, help="Also read the event stream, for an exact images/s.")
@click.option("--json", "as_json", is_flag=True, help="No live bar: one JSON summary line at the end.")
@pass_cli
@click.pass_context
def watch_cmd(
    ctx: click.Context,
    context: CliContext,
    batch_id: str,
    interval: float,
    timeout: float | None,
    events: bool,
    as_json: bool,
) -> None:
    """Live progress of a batch until it is done; exit 1 unless every job succeeded.

    Without a terminal on stdout (or with --json), prints one summary line at the end.
    """
    with context.redis() as client:
        client.batch(batch_id)  # not found: exit 2 before anything is drawn
        counter = EventCounter(client.status_store, batch_id) if events else None
        summary = follow(client, batch_id, as_json, interval_s=interval, timeout_s=timeout, counter=counter)
    if not all_succeeded(summary.batch):
        ctx.exit(1)


def follow(client: Sdk, batch_id: str, as_json: bool, echo: bool = True, **options: Any) -> WatchSummary:
    """Follow a batch until done (a live bar on a terminal); print its summary line unless not `echo`."""
    out = Console()
    live = out.is_terminal and not as_json
    try:
        summary = watch(client, batch_id, console=out if live else None, **options)
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    if echo:
        click.echo(json.dumps(summary.as_dict()) if as_json else summary.line())
    return summary


@click.command()
@click.argument("id_")
@pass_cli
def cancel(context: CliContext, id_: str) -> None:
    """Cancel a job, or every unfinished job of a batch (running ones stop at their next step)."""
    with context.client() as client:
        n = client.cancel(id_)
    click.echo(f"canceled {n} job{'s' if n != 1 else ''}")


@click.command()
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
@pass_cli
def results(
    context: CliContext, id_: str, manifest_path: Path | None, download_to: Path | None, as_json: bool
) -> None:
    """Outputs of a job or a batch: URIs, presigned URLs for s3://, optional manifest and download."""
    with context.client() as client:
        if manifest_path is not None:
            try:
                lines = client.manifest_lines(id_)
            except NotOverHttp as exc:
                raise click.UsageError(
                    f"{exc.naming('--manifest')}; use --json for one object per job"
                ) from None
            n = 0
            with manifest_path.open("w", encoding="utf-8") as fh:
                for entry in lines:
                    fh.write(encode_line(entry))
                    n += 1
            console.print(f"wrote {n} lines to {manifest_path}", markup=False)
        for res in client.iter_results(id_, download_to):  # one job at a time, for big batches
            if as_json:
                click.echo(json.dumps(res.model_dump(mode="json"), ensure_ascii=False))
                continue
            line = f"{res.job_id} {res.state.value}"
            if res.error:
                line += f" {res.error.code}: {res.error.message}"
            click.echo(line)
            for url in res.files or res.urls:
                click.echo(f"  {url}")


@click.command("retry-failed")
@click.argument("batch_id")
@click.option("--json", "as_json", is_flag=True)
@pass_cli
@click.pass_context
def retry_failed(ctx: click.Context, context: CliContext, batch_id: str, as_json: bool) -> None:
    """Send a batch's failed jobs again (same spec and seed); exit 1 if some could not be."""
    with context.client() as client:
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


@click.command("dead-letters")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")
@pass_cli
def dead_letters(context: CliContext, limit: int, as_json: bool) -> None:
    """Jobs that failed as attempts_exhausted (they kept killing their worker), newest first."""
    shown = 0
    with context.redis() as client:
        for st in client.dead_letters(limit):
            shown += 1
            if as_json:
                click.echo(json.dumps(st.model_dump(mode="json")))
            else:
                reason = st.error.message if st.error else ""
                click.echo(f"{st.job_id}  attempts {st.attempts}  {reason}")
    if not shown:  # on stderr, so that with --json stdout holds JSON lines only (here none)
        console.print("no dead letters", markup=False)


COMMANDS = (submit, status, wait, watch_cmd, cancel, results, retry_failed, dead_letters)
