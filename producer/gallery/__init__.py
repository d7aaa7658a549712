"""A batch's contact sheet: a static, offline HTML page of thumbnails, prompts, seeds, scores and errors.

`write_gallery(reader, storage, batch_id, out)` writes it; `kandinsky-batch gallery` and the demo
call it. The page (index.html, gallery.js) is plain HTML and JavaScript with no network use of
its own, so it works opened from disk; it shows one page of cards at a time with lazy images.
"""

from producer.gallery.writer import PAGE_SIZE, Gallery, write_gallery

__all__ = ["PAGE_SIZE", "Gallery", "write_gallery"]
