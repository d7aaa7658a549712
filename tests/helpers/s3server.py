"""A real S3 endpoint for tests: moto's ThreadedMotoServer on 127.0.0.1, in this process.

moto keeps its data in module-level backends, so buckets and objects survive a
`stop()` / `start()` on the same port (what outage tests need), and every server
in the process shares them: tests use buckets of their own.
"""

from __future__ import annotations

import functools
import json
import socket
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

HOST = "127.0.0.1"
REGION = "us-east-1"
TEST_KEY = "test"  # moto accepts any credentials unless auth is enforced (see enforced_auth)


class S3Server:
    """moto's S3 (and IAM) API over HTTP; `start()` again after `stop()` reuses the same port."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: ThreadedMotoServer | None = None

    @property
    def endpoint_url(self) -> str:
        if not self.port:
            raise RuntimeError("the server has not been started")
        return f"http://{HOST}:{self.port}"

    def start(self) -> str:
        """Start serving and return the endpoint URL (a free port the first time, the same one after)."""
        if self._server is not None:
            raise RuntimeError("already running")
        if self.port:
            _check_bindable(self.port)  # ThreadedMotoServer.start() would wait forever on a taken port
        server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server
        return self.endpoint_url

    def stop(self) -> None:
        """Stop serving and close the listening socket: connections are refused until `start()`."""
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        # moto's stop() leaves the socket listening; close it so clients see a real outage.
        wsgi = server._server
        if wsgi is not None:
            wsgi.server_close()

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_bindable(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((HOST, port))


@contextmanager
def running_s3_server() -> Iterator[str]:
    """The endpoint URL of a fresh server, stopped on exit (for pytest fixtures)."""
    with S3Server() as server:
        yield server.endpoint_url


@functools.cache
def client(endpoint_url: str, service: str = "s3", key: str = TEST_KEY, secret: str = TEST_KEY) -> Any:
    """A plain boto3 client for the test server (set-up and raw checks, not the code under test).

    Cached: building a client loads botocore's service models (~0.2 s); clients are thread-safe.
    """
    session = boto3.session.Session(aws_access_key_id=key, aws_secret_access_key=secret, region_name=REGION)
    return session.client(service, endpoint_url=endpoint_url)


def create_bucket(endpoint_url: str, prefix: str = "kbt") -> str:
    """A new, empty bucket with a unique name."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    client(endpoint_url).create_bucket(Bucket=name)
    return name


def _set_auth(endpoint_url: str, free_requests: str) -> None:
    request = urllib.request.Request(
        f"{endpoint_url}/moto-api/reset-auth",
        data=free_requests.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},  # moto reads the raw body; a form type would hide it
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


@contextmanager
def enforced_auth(endpoint_url: str) -> Iterator[tuple[str, str]]:
    """Make moto check credentials (process-wide) and yield a valid (key id, secret) with s3:* rights.

    Unknown key ids then get InvalidAccessKeyId and wrong secrets SignatureDoesNotMatch, as on AWS.
    """
    iam = client(endpoint_url, "iam")
    user = f"kbt-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(
        UserName=user,
        PolicyName="s3-all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]
    _set_auth(endpoint_url, "0")
    try:
        yield key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        _set_auth(endpoint_url, "inf")
