"""Redis with a password, and with TLS: the SDK, the CLI and a real worker, against a real
`redis-server` started here with `--requirepass` (and `--tls-port` with a certificate made here).

A wrong password is one clear error line at once, never a retry loop. The password works as
`?password=` too, and is never printed, in whichever form it is given.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
import redis

from kandinsky_batch.schema import JobState
from producer.client import Client
from producer.launch import worker_env
from tests.conftest import IN_CI, WorkerProcess, make_settings
from tests.helpers.tls import make_certificates

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-for-tests"
TINY = {"height": 64, "width": 64, "num_inference_steps": 2, "prior_num_inference_steps": 2}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server() -> str:
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class Secured:
    url: str  # with the right password
    wrong_url: str  # with a wrong one


def start_server(folder: Path, tls: bool) -> Iterator[Secured]:
    port = free_port()
    args = [redis_server(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--requirepass", PASSWORD, "--dir", str(folder)]  # fmt: skip
    query = ""
    if tls:
        ca = make_certificates(folder)
        args += ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(folder / "server.crt"),
                 "--tls-key-file", str(folder / "server.key"), "--tls-ca-cert-file", str(ca),
                 "--tls-auth-clients", "no"]  # fmt: skip
        query = f"?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    else:
        args += ["--port", str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    scheme = "rediss" if tls else "redis"
    secured = Secured(
        f"{scheme}://:{PASSWORD}@127.0.0.1:{port}/0{query}", f"{scheme}://:wrong@127.0.0.1:{port}/0{query}"
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis.from_url(secured.url, socket_timeout=1) as client:
                    client.ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)
        yield secured
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["password", "password+tls"])
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Secured]:
    yield from start_server(tmp_path, tls=request.param.endswith("tls"))


def test_the_sdk_cli_and_a_worker_run_a_job_through_a_secured_redis(secured, tiny_models, tmp_path):
    settings = make_settings(secured.url, tiny_models, tmp_path)
    worker = WorkerProcess(settings, tmp_path / "w.log").start()
    try:
        with Client(settings) as client:
            job = client.submit({"prompt": "behind a password", **TINY})
            final = client.wait(job, timeout=120)
        assert final.state is JobState.SUCCEEDED, worker.log()
        cli = [sys.executable, "-m", "producer.cli", "status", job, "--json"]
        out = subprocess.run(cli, env=worker_env(settings), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and '"succeeded"' in out.stdout, out.stderr
    finally:
        assert worker.stop() == 0


def test_a_wrong_password_is_one_clear_line_at_once(secured, tiny_models, tmp_path):
    settings = make_settings(secured.wrong_url, tiny_models, tmp_path)
    # The CLI: one line, exit 1, in far less time than the client's reconnect budget (~30 s)
    started = time.monotonic()
    cli = [sys.executable, "-m", "producer.cli", "status", "some-batch"]
    out = subprocess.run(cli, env=worker_env(settings), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and time.monotonic() - started < 15
    [line] = out.stderr.strip().splitlines()
    assert "refused the password" in line and PASSWORD not in line and ":wrong@" not in line
    # A worker: exits 1 at start with the same line, no traceback
    worker = WorkerProcess(settings, tmp_path / "w.log")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with 1"):
        worker.start(timeout=60)
    assert time.monotonic() - started < 30
    assert "refused the password" in worker.log() and "Traceback" not in worker.log()


def test_the_worker_check_probe_names_a_refused_password(secured, tiny_models, tmp_path):
    settings = make_settings(secured.wrong_url, tiny_models, tmp_path)
    cli = [sys.executable, "-m", "producer.cli", "worker", "check"]
    out = subprocess.run(cli, env=worker_env(settings), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "refused the password" in out.stderr


def query_form(url: str, password: str = PASSWORD) -> str:
    """The same URL with `password` as a `?password=` parameter instead of in the userinfo."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, f"password={quote(password, safe='')}") if q)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, query, ""))


def test_a_worker_runs_a_job_with_the_password_as_a_query_parameter(secured, tiny_models, tmp_path):
    # Text logs: Celery's banner, which names its broker, is printed too
    settings = make_settings(query_form(secured.url), tiny_models, tmp_path, log_format="text")
    worker = WorkerProcess(settings, tmp_path / "w.log").start()
    try:
        with Client(settings) as client:
            job = client.submit({"prompt": "behind a query password", **TINY})
            final = client.wait(job, timeout=120)
        assert final.state is JobState.SUCCEEDED, worker.log()
    finally:
        assert worker.stop() == 0, worker.log()
    log = (tmp_path / "w.log").read_text()
    assert "transport:" in log and PASSWORD not in log


def test_a_query_password_is_printed_by_neither_the_cli_nor_the_probe(secured, tiny_models, tmp_path):
    wrong = "not-the-" + PASSWORD  # so that `PASSWORD not in` covers both
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    runs = [
        (query_form(secured.url, wrong), ["status", "some-batch"], "Redis at "),
        (query_form(secured.url, wrong), ["worker", "check"], "Redis at "),
        (query_form(secured.url), ["worker", "check"], "no ready file"),
        (query_form(nobody), ["worker", "check"], "cannot reach Redis at redis://127.0.0.1"),
    ]
    for url, args, expected in runs:
        env = worker_env(make_settings(url, tiny_models, tmp_path))
        cli = [sys.executable, "-m", "producer.cli", *args]
        out = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
        printed = out.stdout + out.stderr
        assert out.returncode == 1 and expected in printed, printed
        assert PASSWORD not in printed, printed
        if "Redis" in expected:  # the line names the URL, its password masked
            assert "password=***" in printed, printed
