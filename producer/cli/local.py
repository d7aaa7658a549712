"""The commands that run things on this machine: `worker` (and `worker check`), `models make-tiny`
and `demo`. They load the worker (torch, diffusers) lazily, inside the command, so the rest of the
CLI never imports it.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from producer.cli.base import CliContext, console, pass_cli


@click.group(invoke_without_command=True)
@click.option("--loglevel", default="INFO", show_default=True)
@pass_cli
@click.pass_context
def worker(ctx: click.Context, context: CliContext, loglevel: str) -> None:
    """Run a GPU worker (serves KANDINSKY_BATCH_MODES); `worker check` for probes."""
    settings = context.redis_settings()
    if ctx.invoked_subcommand is None:
        from worker.celery_app import serve

        ctx.exit(serve(settings, loglevel=loglevel.upper()))


@worker.command()
@pass_cli
@click.pass_context
def check(ctx: click.Context, context: CliContext) -> None:
    """Exit 0 only if this worker's pipelines are warm and Redis and storage are reachable."""
    from worker.check import problems

    found = problems(context.redis_settings())
    for problem in found:
        click.echo(f"not ready: {problem}", err=True)
    if found:
        ctx.exit(1)
    click.echo("ready")


@click.group()
def models() -> None:
    """Model helpers."""


@models.command("make-tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
def make_tiny_cmd(directory: Path, seed: int) -> None:
    """Write a tiny random-weight prior, decoder and inpaint decoder (offline, for tests and demos)."""
    from worker.tiny import make_tiny

    made = make_tiny(directory, seed=seed).resolve()
    # The settings that point a worker at them, ready to paste or `source`; the tiny model is
    # random noise at any size, so jobs for it use small images and few steps (e.g. 64 px, 2 steps).
    for name in ("prior", "decoder", "inpaint"):
        click.echo(f"export KANDINSKY_BATCH_{name.upper()}_MODEL={shlex.quote(str(made / name))}")
    click.echo("export KANDINSKY_BATCH_DEVICE=cpu KANDINSKY_BATCH_TORCH_THREADS=1")
    console.print(
        "the tiny model is for tests and demos: submit with --height 64 --width 64 --steps 2 --prior-steps 2",
        markup=False,
    )


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("kandinsky-batch-demo"),
    show_default=True,
    help="Where the images (and the tiny model) go.",
)
@click.option("--count", type=int, default=6, show_default=True, help="How many prompts to submit.")
@click.option("--timeout", type=float, default=600, show_default=True)
@click.option(
    "--serve",
    is_flag=True,
    help="Then keep Redis, the worker and the API up; OUT/env points a shell at them.",
)
@pass_cli
@click.pass_context
def demo(ctx: click.Context, context: CliContext, out: Path, count: int, timeout: float, serve: bool) -> None:
    """Run the whole path on this machine: tiny model, Redis, a worker, a few prompts."""
    from producer.demo import run_demo

    ctx.exit(run_demo(context.redis_settings(), out.resolve(), count, timeout, console, serve))


COMMANDS = (worker, models, demo)
