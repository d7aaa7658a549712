"""Fetch an input image by `https://` URL without letting a job reach into our own network (SSRF).

Every hop is checked the same way: https only, no credentials in the URL, the
host resolved once and every address it resolves to must be public unicast.
The connection then goes to that checked address, while SNI, the certificate
check and the Host header use the URL's host name, so a second DNS answer
cannot swap in a private address (DNS rebinding). At most 3 redirects; the
body is capped at `max_input_bytes` and the whole fetch at 20 s. Proxy
environment variables are ignored on purpose. Every refusal is BadInput.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from kandinsky_batch.errors import BadInput
from kandinsky_batch.settings import Settings

MAX_REDIRECTS = 3
TOTAL_TIMEOUT_S = 20.0
CHUNK_BYTES = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "kandinsky-batch (input fetcher)"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# NAT64 prefixes carry an IPv4 address in their last 32 bits (RFC 6052, RFC 8215).
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# Cloud instance metadata (AWS, GCP, Azure, ...): named in refusals since it is the usual SSRF target.
_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})


@dataclass(frozen=True)
class Hop:
    """One checked request: connect to `ip`, but speak to `host` (SNI, certificate, Host header)."""

    url: str
    host: str
    port: int
    ip: str
    target: str


Resolver = Callable[[str], Sequence[str]]
"""Host name -> IP address strings. The seam tests use to simulate DNS answers."""

Connect = Callable[[Hop, float], http.client.HTTPConnection]
"""(checked hop, timeout in seconds) -> an unopened connection to hop.ip that speaks to hop.host."""


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


def check_hop(url: str, what: str, resolve: Resolver) -> Hop:
    """The hop for `url` once its scheme, host and every resolved address pass; else BadInput."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise BadInput(f"{what}: only https:// URLs are fetched, not {url}")
    if parts.username is not None or parts.password is not None:
        raise BadInput(f"{what}: URLs with credentials are refused ({parts.hostname})")
    if not parts.hostname:
        raise BadInput(f"{what}: no host in {url}")
    try:
        port = parts.port or 443
        host = parts.hostname.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise BadInput(f"{what}: invalid URL {url}: {exc}") from None
    ips = resolve_checked(host, what, resolve)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Hop(url=url, host=host, port=port, ip=ips[0], target=target)


def resolve_checked(host: str, what: str, resolve: Resolver) -> list[str]:
    """Every address of `host`, or BadInput if it has none or any of them is not public."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        ips = [str(literal)]
    else:
        try:
            ips = list(resolve(host))
        except (OSError, UnicodeError) as exc:
            raise BadInput(f"{what}: cannot resolve host {host}: {exc}") from None
        if not ips:
            raise BadInput(f"{what}: host {host} has no addresses")
    for ip in ips:
        reason = forbidden_reason(ip)
        if reason is not None:
            raise BadInput(
                f"{what}: host {host} resolves to {ip}, a {reason} address; only public ones are fetched"
            )
    return ips


def forbidden_reason(ip: str) -> str | None:
    """Why `ip` must not be contacted ("loopback", "private", ...), or None for a public unicast address."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "malformed"
    if isinstance(addr, ipaddress.IPv6Address):
        inner = _embedded_ipv4(addr)
        if inner is not None:
            reason = forbidden_reason(str(inner))
            if reason is not None:
                return f"{reason} (IPv4 {inner} inside IPv6)"
    checks = (
        ("cloud metadata", addr in _METADATA),
        ("unspecified", addr.is_unspecified),
        ("loopback", addr.is_loopback),
        ("link-local", addr.is_link_local),
        ("multicast", addr.is_multicast),
        ("private", addr.is_private),
        ("reserved", addr.is_reserved),
        ("site-local", isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local),
        ("non-public", not addr.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one routes to (mapped, 6to4, Teredo client, NAT64), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if any(addr in net for net in _NAT64):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def system_resolver(host: str) -> list[str]:
    """The host's addresses from the system resolver (A and AAAA), in its order, without duplicates."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand; the host name still drives SNI, certificate and Host."""

    def __init__(self, host: str, ip: str, port: int, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.pinned_ip = ip
        self.tls_context = context

    def connect(self) -> None:
        sock = socket.create_connection((self.pinned_ip, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self.tls_context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def pinned_https(hop: Hop, timeout: float) -> http.client.HTTPConnection:
    """The real connection: TLS with the system's CA certificates to the checked address."""
    return PinnedHTTPSConnection(hop.host, hop.ip, hop.port, timeout, _tls_context())


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
