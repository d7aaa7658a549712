"""Reaching an https URL a caller gave us without letting it reach into our own network (SSRF).

Shared by the worker's input fetcher and the API's webhook sender. A URL passes when it is
https, has no credentials, and every address its host resolves to is public unicast. The
connection then goes to that checked address, while SNI, the certificate check and the Host
header use the URL's host name, so a second DNS answer cannot swap in a private address (DNS
rebinding). Proxy environment variables are ignored on purpose. Every refusal is BadInput;
ForbiddenAddress when retrying cannot help.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from kandinsky_batch.errors import BadInput


class ForbiddenAddress(BadInput):
    """The URL is refused for what it is or where it points, not for a passing failure (DNS).

    `kind` is what the address is ("loopback", "private", ...) without the address itself: what a
    tenant may be told, where the message (with the internal DNS answer) is for the log.
    """

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


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


def check_hop(url: str, what: str, resolve: Resolver, allow_loopback: bool = False) -> Hop:
    """The hop for `url` once its scheme, host and every resolved address pass; else BadInput."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "https":
        raise ForbiddenAddress(f"{what}: only https:// URLs are fetched, not {url}")
    if parts.username is not None or parts.password is not None:
        raise ForbiddenAddress(f"{what}: URLs with credentials are refused ({parts.hostname})")
    if not parts.hostname:
        raise ForbiddenAddress(f"{what}: no host in {url}")
    try:
        port = parts.port or 443
        host = parts.hostname.encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise ForbiddenAddress(f"{what}: invalid URL {url}: {exc}") from None
    ips = resolve_checked(host, what, resolve, allow_loopback)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Hop(url=url, host=host, port=port, ip=ips[0], target=target)


def resolve_checked(host: str, what: str, resolve: Resolver, allow_loopback: bool = False) -> list[str]:
    """Every address of `host`, or BadInput if it has none or any of them is not public.

    `allow_loopback` lets loopback addresses through too (tests, and a receiver on the same host).
    """
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
        if reason == "loopback" and allow_loopback:
            continue
        if reason is not None:
            raise ForbiddenAddress(
                f"{what}: host {host} resolves to {ip}, a {reason} address; only public ones are fetched",
                kind=reason.split(" (")[0],
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
