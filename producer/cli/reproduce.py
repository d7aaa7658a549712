"""`kandinsky-batch reproduce JOB [--image K]`: print a standalone script that regenerates an image."""

from __future__ import annotations

from pathlib import Path

import click

from kandinsky_batch.errors import BadInput
from kandinsky_batch.schema import JobStatus
from producer.cli.base import CliContext, pass_cli
from producer.reproduce import locator, read_metadata, render, script_parameters


@click.command()
@click.argument("job_id")
@click.option("--image", "image", type=click.IntRange(0), default=0, show_default=True, help="Image k.")
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the script to this file instead of printing it.",
)
@pass_cli
def reproduce(context: CliContext, job_id: str, image: int, out: Path | None) -> None:
    """Print a Python script (torch and diffusers only) that regenerates image K of a succeeded job.

    Run it as `python script.py [OUT.png]`. Inputs stored in S3 are given as presigned URLs that
    expire after KANDINSKY_BATCH_PRESIGN_EXPIRY_S.
    """
    with context.redis() as client:
        job = client.status(job_id)
        if not isinstance(job, JobStatus):
            raise BadInput(f"{job_id} is a batch: reproduce takes a job id ({job_id}-N)")
        meta = read_metadata(client.storage, job)
        parameters = script_parameters(meta, image, locator(client.storage, client.settings.presign_expiry_s))
    script = render(parameters)
    if out is None:
        click.echo(script, nl=False)
    else:
        out.write_text(script)
        click.echo(str(out), err=True)


COMMANDS = (reproduce,)
