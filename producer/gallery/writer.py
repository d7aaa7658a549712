"""Writing a batch's gallery: cards streamed to disk, thumbnails made in a small thread pool.

Jobs are read from the status store in index order, a chunk at a time; each chunk's cards are
made in parallel (S3 reads and image decoding wait more than they compute) and written before
the next chunk is read, so memory holds one chunk's images whatever the batch's size.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import IO

from kandinsky_batch.storage import Storage
from kandinsky_batch.store.reads import StatusReader
from producer.gallery.cards import CardMaker, Links
from producer.gallery.thumbs import pillow_available

CHUNK = 64  # jobs whose cards are made together
PAGE_SIZE = 100  # cards on one page of the grid
ASSETS = ("index.html", "gallery.js")


@dataclass(frozen=True)
class Gallery:
    index: Path  # DIR/index.html
    cards: int
    thumbs_made: int  # made by this run; the rest were there already
    thumbnails: bool  # False without Pillow (cards show their originals)


def write_gallery(
    reader: StatusReader,
    storage: Storage,
    batch_id: str,
    out: Path,
    *,
    expires_s: int = 7 * 24 * 3600,
    page_size: int = PAGE_SIZE,
    workers: int = 4,
) -> Gallery:
    """Write DIR/index.html, gallery.js, cards.js and cards.json, and DIR/thumbs/, for one batch.

    cards.json is the card data for other tools; cards.js is the same data as a script, because a
    page opened from file:// may load scripts but not fetch JSON. NotFound for an unknown batch.
    """
    status = reader.batch(batch_id)
    out.mkdir(parents=True, exist_ok=True)
    thumbnails = pillow_available()
    maker = CardMaker(Links(storage, out, expires_s), thumbs=thumbnails)
    mode = maker.file_mode
    head = {
        "batch": batch_id,
        "total": status.total,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pageSize": page_size,
        "linksExpire": None if maker.links.local else time.time() + expires_s,
    }
    cards = made = 0
    with ExitStack() as stack, ThreadPoolExecutor(max_workers=workers) as pool:
        as_json = stack.enter_context(_replacing(out / "cards.json", mode))
        as_script = stack.enter_context(_replacing(out / "cards.js", mode))
        opening = json.dumps(head)[:-1] + ', "cards": [\n'
        as_json.write(opening)
        as_script.write("window.KB_GALLERY = " + opening)
        jobs = reader.jobs(batch_id)
        while chunk := list(islice(jobs, CHUNK)):
            for card, n in pool.map(maker.card, chunk):
                line = ("" if cards == 0 else ",\n") + json.dumps(card)
                as_json.write(line)
                as_script.write(line)
                cards, made = cards + 1, made + n
        as_json.write("\n]}\n")
        as_script.write("\n]};\n")
    for name in ASSETS:
        with _replacing(out / name, mode) as fh:
            fh.write(resources.files("producer.gallery").joinpath(name).read_text(encoding="utf-8"))
    return Gallery(out / "index.html", cards, made, thumbnails)


@contextmanager
def _replacing(path: Path, mode: int) -> Iterator[IO[str]]:
    """A text file written beside `path` and renamed over it on success: a reader sees old or new.

    It gets `mode`, the mode of any tool's new file (0666 less the umask), so a gallery in a
    shared folder is as readable as the files beside it.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
