"""`kandinsky-batch`: one entry point, subcommands for producers, workers and the demo.

`main(argv)` returns the exit code, so tests call it directly. Errors print one
line and exit non-zero; `--json` prints machine-readable output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console

from producer.client import Client
from producer.errors import KandinskyBatchError
from producer.schema import BatchStatus, JobState, JobStatus, Mode
from producer.settings import Settings

console = Console(stderr=True)

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


def _settings(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


@click.group()
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Batch image generation with Kandinsky 2.1 on Redis, Celery and S3."""
    if ctx.obj is None:
        ctx.obj = Settings()


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
    help="JSONL (one job per line) or CSV with a prompt column.",
)
@_spec_options
@click.option("--batch-id", default=None, help="Batch id (default: new, or derived from the file).")
@click.option("--strict", is_flag=True, help="Refuse the whole file if any line is invalid.")
@click.option("--wait", "wait_", is_flag=True, help="Wait until every job has finished.")
@click.option("--json", "as_json", is_flag=True, help="Print {batch_id, job_ids, ...} as JSON.")
@click.pass_context
def submit(
    ctx: click.Context,
    prompts: tuple[str, ...],
    path: Path | None,
    batch_id: str | None,
    strict: bool,
    wait_: bool,
    as_json: bool,
    **fields: Any,
) -> None:
    """Submit jobs: --prompt for one or a few, --file for a batch. Flags are defaults for every line."""
    if bool(prompts) == bool(path):
        raise click.UsageError("give --prompt (one or more) or --file, not both")
    defaults = {k: v for k, v in fields.items() if v is not None}
    with Client(_settings(ctx)) as client:
        source: Any = path if path else [{**defaults, "prompt": p} for p in prompts]
        result = client.submit_batch(
            source, batch_id=batch_id, defaults=defaults if path else {}, strict=strict
        )
        for err in result.errors:
            console.print(f"line {err.line}: {err.reason}", style="red", markup=False)
        if as_json:
            out = {
                "batch_id": result.batch_id,
                "job_ids": result.job_ids,
                "sent": result.sent,
                "skipped": result.skipped,
                "errors": [{"line": e.line, "reason": e.reason} for e in result.errors],
            }
            click.echo(json.dumps(out))
        else:
            click.echo(result.batch_id)
            console.print(
                f"{len(result.indices)} jobs in batch ({result.sent} sent, "
                f"{result.skipped} already sent), {len(result.errors)} bad lines"
            )
        if not result.indices:
            raise click.ClickException("no job was submitted")
        if wait_:
            final = client.wait(result.batch_id)
            _print_status(final, as_json=False)
    if result.errors:
        ctx.exit(1)


@cli.command()
@click.argument("id_")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, id_: str, as_json: bool) -> None:
    """Status of a job or a batch."""
    with Client(_settings(ctx)) as client:
        _print_status(client.status(id_), as_json)


@cli.command()
@click.argument("id_")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def wait(ctx: click.Context, id_: str, timeout: float | None, as_json: bool) -> None:
    """Wait until a job or a whole batch has finished; exit 1 unless all succeeded."""
    with Client(_settings(ctx)) as client:
        try:
            final = client.wait(id_, timeout=timeout)
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from None
    _print_status(final, as_json)
    if isinstance(final, BatchStatus):
        ok = final.counts[JobState.SUCCEEDED] == final.total
    else:
        ok = final.state is JobState.SUCCEEDED
    if not ok:
        ctx.exit(1)


def _print_status(st: JobStatus | BatchStatus, as_json: bool) -> None:
    if as_json:
        data = st.model_dump(mode="json")
        if isinstance(st, BatchStatus):
            data["done"] = st.done
        click.echo(json.dumps(data))
        return
    if isinstance(st, BatchStatus):
        counts = ", ".join(f"{s.value} {n}" for s, n in st.counts.items())
        click.echo(f"batch {st.batch_id}: {st.total} jobs: {counts}{' (done)' if st.done else ''}")
        return
    line = f"job {st.job_id}: {st.state.value} (attempts {st.attempts}, seed {st.seed})"
    if st.state == "running":
        line += f" step {st.progress.step}/{st.progress.total}"
    click.echo(line)
    for uri in st.outputs:
        click.echo(f"  {uri}")
    if st.error:
        click.echo(f"  error {st.error.code}: {st.error.message}")


@cli.group(invoke_without_command=True)
@click.option("--loglevel", default="INFO", show_default=True)
@click.pass_context
def worker(ctx: click.Context, loglevel: str) -> None:
    """Run a GPU worker (serves KANDINSKY_BATCH_MODES); `worker check` for probes."""
    if ctx.invoked_subcommand is None:
        from worker.celery_app import serve

        ctx.exit(serve(_settings(ctx), loglevel=loglevel.upper()))


@worker.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Exit 0 only if this worker's pipelines are warm and Redis and storage are reachable."""
    from worker.check import problems

    found = problems(_settings(ctx))
    for problem in found:
        click.echo(f"not ready: {problem}", err=True)
    if found:
        ctx.exit(1)
    click.echo("ready")


@cli.group()
def models() -> None:
    """Model helpers."""


@models.command("make-tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
def make_tiny_cmd(directory: Path, seed: int) -> None:
    """Write a tiny random-weight prior, decoder and inpaint decoder (offline, for tests and demos)."""
    from worker.tiny import make_tiny

    make_tiny(directory, seed=seed)
    click.echo(f"tiny models in {directory}/prior, {directory}/decoder, {directory}/inpaint")


@cli.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("kandinsky-batch-demo"),
    show_default=True,
    help="Where the images (and the tiny model) go.",
)
@click.option("--count", type=int, default=6, show_default=True, help="How many prompts to submit.")
@click.option("--timeout", type=float, default=600, show_default=True)
@click.pass_context
def demo(ctx: click.Context, out: Path, count: int, timeout: float) -> None:
    """Run the whole path on this machine: tiny model, Redis, a worker, a few prompts."""
    from producer.demo import run_demo

    ctx.exit(run_demo(_settings(ctx), out.resolve(), count, timeout, console))


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
        click.echo(f"error: {exc.code}: {exc.message}", err=True)
        return 2 if exc.code == "not_found" else 1
    except ValidationError as exc:
        click.echo(f"error: invalid settings: {exc}", err=True)
        return 2
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
