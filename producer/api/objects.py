"""Objects of the API's storage (images, manifests) as an HTTP client gets them.

A file URI names a path on the API's machine, so file storage is served by the API itself; an
S3 object is fetched from S3, through a presigned URL.
"""

from __future__ import annotations

from urllib.parse import urlparse

from fastapi.responses import FileResponse, RedirectResponse, Response

from kandinsky_batch.errors import NotFound
from producer.client import Client


def stored_object(client: Client, uri: str, what: str, media_type: str | None = None) -> Response:
    """The file itself from file storage, a 307 to a presigned URL for S3."""
    if urlparse(uri).scheme == "s3":
        return RedirectResponse(client.url_for(uri), status_code=307)
    key = client.storage.key_for(uri)
    path = None if key is None else client.storage.local_path(key)
    if path is None:  # only files inside the configured storage are served
        raise NotFound(f"{what} is not in this API's storage")
    if not path.is_file():
        raise NotFound(f"{what} is missing from storage")
    return FileResponse(path, media_type=media_type)
