"""`kandinsky-batch gallery BATCH -o DIR`: a static HTML contact sheet of a batch (producer/gallery/)."""

from __future__ import annotations

from pathlib import Path

import click

from producer.cli.base import CliContext, pass_cli
from producer.gallery import PAGE_SIZE, write_gallery


@click.command()
@click.argument("batch_id")
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The folder to write index.html, cards.json and thumbs/ to (thumbnails there are kept).",
)
@click.option("--page-size", type=click.IntRange(1, 10_000), default=PAGE_SIZE, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Threads.")
@pass_cli
def gallery(context: CliContext, batch_id: str, out: Path, page_size: int, workers: int) -> None:
    """Write a batch's gallery: thumbnails, prompts, seeds, CLIP scores, errors; sort, filter, pages.

    Opens offline from disk. With S3 storage, links to full images are presigned and expire after
    KANDINSKY_BATCH_PRESIGN_EXPIRY_S; run the command again for fresh ones (thumbnails are kept).
    """
    with context.redis() as client:
        made = write_gallery(
            client.status_store,
            client.storage,
            batch_id,
            out,
            expires_s=client.settings.presign_expiry_s,
            page_size=page_size,
            workers=workers,
        )
    note = "" if made.thumbnails else " (no Pillow: cards show the full images; pip install pillow)"
    click.echo(f"{made.cards} cards, {made.thumbs_made} new thumbnails{note}", err=True)
    click.echo(str(made.index))


COMMANDS = (gallery,)
