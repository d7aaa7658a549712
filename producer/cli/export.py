"""The CLI's `export` command: a batch's images as WebDataset shards, parquet or files (producer/export/)."""

from __future__ import annotations

import json

import click

from producer.cli.base import CliContext, check_redis, pass_cli
from producer.export import ExportError, Format, export_batch
from producer.export.options import IMAGE_FORMATS


class ExportRefused(click.ClickException):
    """An ExportError for what the caller asked (unknown or unfinished batch, bad option): exit 2."""

    exit_code = 2


class ExportFailed(click.ClickException):
    """An ExportError for a destination that cannot be written: exit 1."""

    exit_code = 1


@click.command("export")
@click.argument("batch_id")
@click.option("--to", "to", required=True, help="Where: a storage URI, file:///dir or s3://bucket/prefix.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in Format]),
    default=Format.WEBDATASET.value,
    show_default=True,
)
@click.option(
    "--shard-size", type=click.IntRange(min=1), default=10_000, show_default=True, help="Jobs per shard."
)
@click.option(
    "--image-format",
    type=click.Choice(IMAGE_FORMATS),
    default=None,
    help="Convert images (default: as stored).",
)
@click.option("--min-clip-score", type=float, default=None, help="Leave out images scored under this.")
@click.option("--threads", type=click.IntRange(1, 256), default=8, show_default=True, help="Parallel reads.")
@click.option("--overwrite", is_flag=True, help="Rewrite shards an earlier run completed.")
@click.option("--finished-only", is_flag=True, help="Export the finished part of a batch still running.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@pass_cli
def export(
    context: CliContext,
    batch_id: str,
    to: str,
    fmt: str,
    shard_size: int,
    image_format: str | None,
    min_clip_score: float | None,
    threads: int,
    overwrite: bool,
    finished_only: bool,
    as_json: bool,
) -> None:
    """Export BATCH_ID's succeeded images to --to (shard k holds jobs k*size .. (k+1)*size-1)."""
    settings = context.redis_settings()
    check_redis(settings)
    try:
        summary = export_batch(
            settings,
            batch_id,
            to,
            fmt,
            shard_size=shard_size,
            image_format=image_format,
            min_clip_score=min_clip_score,
            threads=threads,
            overwrite=overwrite,
            finished_only=finished_only,
        )
    except ExportError as exc:
        raise (ExportRefused if exc.exit_code == 2 else ExportFailed)(exc.message) from exc
    out = summary.as_dict()
    if as_json:
        click.echo(json.dumps(out))
        return
    c = summary.counts
    click.echo(
        f"{c.samples} images from {c.jobs} jobs in {len(summary.shards_written)} shards to {to} "
        f"({len(summary.shards_skipped)} shards already there); failed {c.failed}, canceled {c.canceled}, "
        f"missing {c.missing_output}, filtered {c.filtered}, unfinished {c.unfinished}; "
        f"{summary.duration_s:.1f} s"
    )


COMMANDS = (export,)
