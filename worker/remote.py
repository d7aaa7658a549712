"""Fetch an input image by `https://` URL without letting a job reach into our own network (SSRF).

Every hop is checked by `kandinsky_batch.netguard` (https only, no credentials, every address
public, the connection pinned to the checked address). At most 3 redirects, each checked the
same way; the body is capped at `max_input_bytes` and the whole fetch at 20 s. Every refusal
is BadInput.
"""

from __future__ import annotations

import http.client
import ssl
import time
from urllib.parse import urljoin

from kandinsky_batch.errors import BadInput
from kandinsky_batch.netguard import Connect, Hop, Resolver, check_hop, pinned_https, system_resolver
from kandinsky_batch.settings import Settings

MAX_REDIRECTS = 3
TOTAL_TIMEOUT_S = 20.0
CHUNK_BYTES = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "kandinsky-batch (input fetcher)"


def fetch_https(
    url: str,
    settings: Settings,
    what: str,
    *,
    resolver: Resolver | None = None,
    connect: Connect | None = None,
    timeout_s: float = TOTAL_TIMEOUT_S,
) -> bytes:
    """The body of `url` after at most 3 checked redirects, or BadInput naming why not."""
    if not settings.allow_https_inputs:
        raise BadInput(
            f"{what}: https:// inputs are disabled on this worker "
            "(KANDINSKY_BATCH_ALLOW_HTTPS_INPUTS=true enables them)"
        )
    resolve = resolver or system_resolver
    open_connection = connect or pinned_https
    deadline = time.monotonic() + timeout_s
    current = url
    for redirects in range(MAX_REDIRECTS + 1):
        hop = check_hop(current, f"{what} (redirected to {current})" if redirects else what, resolve)
        location, body = _get(hop, what, open_connection, deadline, timeout_s, settings.max_input_bytes)
        if location is None:
            return body
        current = urljoin(current, location)
    raise BadInput(f"{what}: {url} redirects more than {MAX_REDIRECTS} times")


def _get(
    hop: Hop, what: str, connect: Connect, deadline: float, timeout_s: float, max_bytes: int
) -> tuple[str | None, bytes]:
    """(redirect location, b"") for a redirect, (None, body) for a 200; anything else is BadInput."""

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BadInput(f"{what}: fetching {hop.url} took longer than {timeout_s:g} s")
        return left

    conn = connect(hop, remaining())
    response: http.client.HTTPResponse | None = None
    try:
        conn.request(
            "GET",
            hop.target,
            headers={
                "User-Agent": USER_AGENT,
                "Accept": "image/png, image/jpeg, image/webp",
                "Accept-Encoding": "identity",
                "Connection": "close",
            },
        )
        sock = conn.sock  # the response keeps reading from it after getresponse() detaches it
        response = conn.getresponse()
        if response.status in REDIRECT_STATUSES:
            location = response.getheader("Location")
            if not location:
                raise BadInput(f"{what}: {hop.url} redirects (HTTP {response.status}) without a Location")
            return location, b""
        if response.status != 200:
            raise BadInput(f"{what}: {hop.url} answered HTTP {response.status} {response.reason}")
        if (
            response.length is not None and response.length > max_bytes
        ):  # Content-Length as http.client reads it
            raise BadInput(f"{what}: {hop.url} is {response.length} bytes, over the {max_bytes} byte limit")
        chunks: list[bytes] = []
        size = 0
        while True:
            if sock is not None:
                sock.settimeout(remaining())
            chunk = response.read1(CHUNK_BYTES)  # one recv at most, so the deadline is checked often
            if not chunk:
                if response.length:  # read1 reports a short body as a plain end; read() would raise
                    raise BadInput(f"{what}: {hop.url} closed the connection after {size} bytes")
                return None, b"".join(chunks)
            size += len(chunk)
            if size > max_bytes:
                raise BadInput(f"{what}: {hop.url} sends more than the {max_bytes} byte limit")
            chunks.append(chunk)
            remaining()
    except TimeoutError:
        raise BadInput(f"{what}: fetching {hop.url} took longer than {timeout_s:g} s") from None
    except ssl.SSLCertVerificationError as exc:
        raise BadInput(f"{what}: TLS certificate of {hop.host} is not valid: {exc.verify_message}") from None
    except (OSError, http.client.HTTPException, UnicodeError) as exc:
        raise BadInput(f"{what}: cannot fetch {hop.url}: {type(exc).__name__}: {exc}") from None
    finally:
        if response is not None:
            response.close()
        conn.close()
