"""fetch_https: SSRF refusals, checked redirects, size and time caps, and the pinned TLS connection.

No internet: DNS answers come from a fake resolver, and the transport seam (`connect`) sends
each checked hop to a local server on 127.0.0.1 instead of the resolved public address.
Everything else (URL and address checks, redirect loop, Host header, caps) is the real code.
"""

from __future__ import annotations

import datetime
import http.client
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kandinsky_batch.errors import BadInput
from kandinsky_batch.netguard import Hop, PinnedHTTPSConnection, forbidden_reason
from kandinsky_batch.settings import Settings
from worker.remote import fetch_https

MAX_BYTES = 4096
PNG = b"\x89PNG\r\n\x1a\n" + b"p" * 100
PUBLIC = {
    "images.example": ["93.184.216.34"],
    "cdn.example": ["2606:4700::1111"],
    "intranet.example": ["10.0.0.5"],
    "evil.example": ["8.8.8.8"],
}


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"allow_https_inputs": True, "max_input_bytes": MAX_BYTES}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class FakeDNS:
    answers: dict[str, list[str]]
    asked: list[str] = field(default_factory=list)

    def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


def no_connection(hop: Hop, timeout: float) -> http.client.HTTPConnection:
    raise AssertionError(f"must not connect to {hop}")


# --- refusals before any connection ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.10.20", "link-local"),
        ("100.64.0.1", "non-public"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "private"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fe80::1", "link-local"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 wrapping 10.0.0.1
    ],
)
def test_a_host_resolving_to_a_non_public_address_is_refused_before_connecting(ip: str, reason: str) -> None:
    dns = FakeDNS({"images.example": [ip]})

    with pytest.raises(BadInput, match=f"resolves to .*a {reason}") as caught:
        fetch_https(
            "https://images.example/cat.png", settings(), "image", resolver=dns, connect=no_connection
        )

    assert caught.value.message.startswith("image: host images.example")


def test_one_private_answer_among_public_ones_is_enough_to_refuse() -> None:
    dns = FakeDNS({"images.example": ["93.184.216.34", "192.168.0.10"]})

    with pytest.raises(BadInput, match=r"192\.168\.0\.10, a private"):
        fetch_https(
            "https://images.example/cat.png", settings(), "image", resolver=dns, connect=no_connection
        )


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1/x.png", "https://[::1]/x.png", "https://169.254.169.254/latest/meta-data/"]
)
def test_a_literal_non_public_address_is_refused_without_asking_dns(url: str) -> None:
    dns = FakeDNS({})

    with pytest.raises(BadInput, match="only public ones are fetched"):
        fetch_https(url, settings(), "image", resolver=dns, connect=no_connection)

    assert dns.asked == []


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://images.example/cat.png", "only https:// URLs"),
        ("ftp://images.example/cat.png", "only https:// URLs"),
        ("images.example/cat.png", "only https:// URLs"),
        ("https://user:pw@images.example/cat.png", "credentials"),
        ("https:///cat.png", "no host"),
        ("https://images.example:99999/cat.png", "invalid URL"),
        ("https://unknown.example/cat.png", "cannot resolve host unknown.example"),
    ],
)
def test_urls_that_are_not_plain_https_to_a_known_host_are_refused(url: str, why: str) -> None:
    with pytest.raises(BadInput, match=why):
        fetch_https(url, settings(), "image", resolver=FakeDNS(PUBLIC), connect=no_connection)


def test_https_inputs_are_refused_when_the_setting_is_off() -> None:
    dns = FakeDNS(PUBLIC)

    with pytest.raises(BadInput, match="https:// inputs are disabled"):
        fetch_https(
            "https://images.example/cat.png", settings(allow_https_inputs=False), "image", resolver=dns
        )

    assert dns.asked == []


def test_the_system_resolver_is_used_by_default_and_localhost_is_refused() -> None:
    with pytest.raises(BadInput, match=r"host localhost resolves to .*loopback"):
        fetch_https("https://localhost/cat.png", settings(), "image", connect=no_connection)


def test_public_addresses_pass_the_check() -> None:
    assert [forbidden_reason(ip) for ip in ("93.184.216.34", "8.8.8.8", "2606:4700::1111")] == [None] * 3


# --- a local server standing in for the internet ------------------------------------------------


@dataclass
class Seen:
    requests: list[tuple[str, str]] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)


def make_handler(seen: Seen) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def send(self, status: int, body: bytes = b"", **headers: str) -> None:
            self.send_response(status)
            fields = {name.replace("_", "-"): value for name, value in headers.items()}
            fields.setdefault("Content-Length", str(len(body)))
            for name, value in fields.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            seen.requests.append((self.headers["Host"], self.path))
            path = self.path
            if path == "/cat.png":
                self.send(200, PNG, Content_Type="image/png")
            elif path.startswith("/hops/"):
                left = int(path.rsplit("/", 1)[1])
                if left:
                    self.send(302, Location=f"/hops/{left - 1}")
                else:
                    self.send(200, b"arrived")
            elif path.startswith("/redirect"):  # /redirect[/STATUS]?to=URL
                status = path.partition("?")[0].removeprefix("/redirect").strip("/") or "302"
                self.send(int(status), Location=path.partition("?to=")[2])
            elif path == "/no-location":
                self.send(302)
            elif path == "/missing":
                self.send(404, b"nope")
            elif path == "/huge-declared":
                self.send(200, b"x", Content_Length=str(MAX_BYTES + 1))
                self.close_connection = True
            elif path == "/truncated":
                self.send(200, b"t" * 10, Content_Length="100")
                self.close_connection = True
            elif path == "/huge-streamed":
                self.send_response(200)
                self.send_header("Connection", "close")  # no length: the body runs to the close
                self.end_headers()
                for _ in range(8):
                    self.wfile.write(b"y" * 1024)
                self.close_connection = True
            elif path == "/slow":
                self.send_response(200)
                self.send_header("Content-Length", "10")
                self.end_headers()
                for _ in range(10):
                    self.wfile.write(b"s")
                    self.wfile.flush()
                    time.sleep(0.3)
            else:
                self.send(500)

    return Handler


def serve(server: http.server.ThreadingHTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def seen() -> Seen:
    return Seen()


@pytest.fixture(scope="module")
def http_port(seen: Seen) -> Iterator[int]:
    yield from serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(seen)))


@dataclass
class Transport:
    """The `connect` seam: records every checked hop, then talks plain HTTP to the local server.

    Like PinnedHTTPSConnection it keeps the URL's host for the Host header and ignores it for
    the TCP connection, so the server sees exactly the Host a real site would.
    """

    port: int
    hops: list[Hop] = field(default_factory=list)

    def __call__(self, hop: Hop, timeout: float) -> http.client.HTTPConnection:
        self.hops.append(hop)
        local_port = self.port

        class Local(http.client.HTTPConnection):
            default_port = 443  # as for HTTPS: the Host header carries no ":443"

            def connect(self) -> None:
                self.sock = socket.create_connection(("127.0.0.1", local_port), self.timeout)

        return Local(hop.host, hop.port, timeout=timeout)


@pytest.fixture
def transport(http_port: int, seen: Seen) -> Transport:
    seen.requests.clear()
    return Transport(http_port)


def fetch(url: str, transport: Transport, dns: FakeDNS | None = None, **kwargs: float) -> bytes:
    return fetch_https(url, settings(), "image", resolver=dns or FakeDNS(PUBLIC), connect=transport, **kwargs)


# --- fetching through the local server ------------------------------------------------------------


def test_the_body_comes_back_from_the_checked_address_with_the_url_host(
    transport: Transport, seen: Seen
) -> None:
    dns = FakeDNS(PUBLIC)

    body = fetch("https://images.example/cat.png", transport, dns)

    assert body == PNG
    assert dns.asked == ["images.example"]  # resolved once; the connection uses that answer
    assert [(h.host, h.ip, h.port, h.target) for h in transport.hops] == [
        ("images.example", "93.184.216.34", 443, "/cat.png")
    ]
    assert seen.requests == [("images.example", "/cat.png")]


def test_three_redirects_are_followed_and_each_hop_is_checked(transport: Transport, seen: Seen) -> None:
    dns = FakeDNS(PUBLIC)

    body = fetch("https://images.example/hops/3", transport, dns)

    assert body == b"arrived"
    assert len(transport.hops) == 4
    assert dns.asked == ["images.example"] * 4
    assert [path for _, path in seen.requests] == ["/hops/3", "/hops/2", "/hops/1", "/hops/0"]


def test_a_fourth_redirect_is_refused(transport: Transport) -> None:
    with pytest.raises(BadInput, match="redirects more than 3 times"):
        fetch("https://images.example/hops/4", transport)

    assert len(transport.hops) == 4


def test_a_redirect_to_another_public_host_is_followed_with_that_host(
    transport: Transport, seen: Seen
) -> None:
    body = fetch("https://images.example/redirect?to=https://cdn.example:8443/cat.png", transport)

    assert body == PNG
    assert [(h.host, h.ip, h.port) for h in transport.hops] == [
        ("images.example", "93.184.216.34", 443),
        ("cdn.example", "2606:4700::1111", 8443),
    ]
    assert seen.requests[-1] == ("cdn.example:8443", "/cat.png")


@pytest.mark.parametrize("status", ["301", "302", "303", "307", "308"])
def test_a_redirect_to_a_private_host_is_refused_before_connecting_to_it(
    transport: Transport, status: str
) -> None:
    with pytest.raises(
        BadInput, match=r"redirected to https://intranet\.example/secret.*10\.0\.0\.5, a private"
    ):
        fetch(f"https://images.example/redirect/{status}?to=https://intranet.example/secret", transport)

    assert [h.host for h in transport.hops] == ["images.example"]


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("https://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("https://[::ffff:10.0.0.1]/", "private"),
        ("http://images.example/cat.png", "only https:// URLs"),
        ("file:///etc/passwd", "only https:// URLs"),
    ],
)
def test_a_redirect_to_a_forbidden_target_is_refused(transport: Transport, target: str, why: str) -> None:
    with pytest.raises(BadInput, match=why):
        fetch(f"https://images.example/redirect?to={target}", transport)

    assert len(transport.hops) == 1


def test_a_relative_redirect_is_resolved_against_the_current_url(transport: Transport, seen: Seen) -> None:
    assert fetch("https://images.example/redirect?to=/cat.png", transport) == PNG
    assert seen.requests[-1] == ("images.example", "/cat.png")


def test_a_redirect_without_location_is_refused(transport: Transport) -> None:
    with pytest.raises(BadInput, match="without a Location"):
        fetch("https://images.example/no-location", transport)


def test_an_error_status_is_refused_with_the_status(transport: Transport) -> None:
    with pytest.raises(BadInput, match="answered HTTP 404"):
        fetch("https://images.example/missing", transport)


def test_a_declared_length_over_the_cap_is_refused(transport: Transport) -> None:
    with pytest.raises(BadInput, match=f"is {MAX_BYTES + 1} bytes, over the {MAX_BYTES} byte limit"):
        fetch("https://images.example/huge-declared", transport)


def test_a_streamed_body_over_the_cap_is_refused(transport: Transport) -> None:
    with pytest.raises(BadInput, match=f"sends more than the {MAX_BYTES} byte limit"):
        fetch("https://images.example/huge-streamed", transport)


def test_a_body_shorter_than_its_declared_length_is_refused(transport: Transport) -> None:
    with pytest.raises(BadInput, match="closed the connection after 10 bytes"):
        fetch("https://images.example/truncated", transport)


def test_a_slow_body_is_cut_off_at_the_total_time_limit(transport: Transport) -> None:
    started = time.monotonic()

    with pytest.raises(BadInput, match=r"took longer than 0\.5 s"):
        fetch("https://images.example/slow", transport, timeout_s=0.5)

    assert time.monotonic() - started < 1.5


# --- the real TLS connection, pinned to an address ------------------------------------------------


@dataclass
class TLS:
    port: int
    client_context: ssl.SSLContext


def make_certificates(folder: Path) -> tuple[Path, Path, str]:
    """(leaf cert, leaf key, CA PEM): a CA and a certificate for images.example signed by it."""
    pytest.importorskip("cryptography")  # installed with moto[server]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: str,
        signer: ec.EllipticCurvePrivateKey,
        ca: bool,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
            ).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = cert("kandinsky-batch test CA", ca_key, "kandinsky-batch test CA", ca_key, ca=True)
    leaf = cert("images.example", leaf_key, "kandinsky-batch test CA", ca_key, ca=False)
    cert_path, key_path = folder / "leaf.pem", folder / "leaf.key"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, ca_cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def tls(seen: Seen, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLS]:
    cert_path, key_path, ca_pem = make_certificates(tmp_path_factory.mktemp("tls"))
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    server_context.sni_callback = lambda sock, name, ctx: seen.sni.append(name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make_handler(seen))
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    client_context = ssl.create_default_context(cadata=ca_pem)
    for port in serve(server):
        yield TLS(port, client_context)


def test_the_pinned_connection_sends_sni_and_host_for_the_name_while_dialling_the_address(
    tls: TLS, seen: Seen
) -> None:
    seen.requests.clear()
    seen.sni.clear()
    conn = PinnedHTTPSConnection("images.example", "127.0.0.1", tls.port, 5.0, tls.client_context)
    try:
        conn.request("GET", "/cat.png")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()

    assert (response.status, body) == (200, PNG)
    assert seen.sni == ["images.example"]
    assert seen.requests == [(f"images.example:{tls.port}", "/cat.png")]


def test_fetch_over_real_tls_returns_the_body_and_refuses_a_certificate_for_another_name(tls: TLS) -> None:
    def pinned_to_local(hop: Hop, timeout: float) -> http.client.HTTPConnection:
        # The real connection class; only the checked public address is swapped for the local server.
        return PinnedHTTPSConnection(hop.host, "127.0.0.1", tls.port, timeout, tls.client_context)

    def get(url: str) -> bytes:
        return fetch_https(url, settings(), "image", resolver=FakeDNS(PUBLIC), connect=pinned_to_local)

    assert get("https://images.example/cat.png") == PNG
    with pytest.raises(BadInput, match=r"TLS certificate of evil\.example is not valid"):
        get("https://evil.example/cat.png")
