"""The CLI with only an API URL and key: the job commands go to a real API server and never to Redis.

Every CLI here is a real `python -m producer.cli` process whose Redis URL points at a dead port, so a
command that touched Redis would fail; the commands that need Redis refuse with a clear message.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from kandinsky_batch.keys import job_id
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.apikeys import ApiKeys
from producer.client import Client
from producer.http_client import HttpClient

pytestmark = pytest.mark.integration

DEAD_REDIS = "redis://127.0.0.1:1/0"
DEAD_API = "http://127.0.0.1:1"
TINY = ["--height", "64", "--width", "64", "--steps", "2", "--prior-steps", "2"]
PNG = b"\x89PNG\r\n\x1a\n"


def http_env(url: str | None, key: str | None) -> dict[str, str]:
    """This environment less any `KANDINSKY_BATCH_*`, plus the API variables and a dead Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANDINSKY_BATCH_")}
    env["KANDINSKY_BATCH_REDIS_URL"] = DEAD_REDIS
    if url is not None:
        env["KANDINSKY_BATCH_API_URL"] = url
    if key is not None:
        env["KANDINSKY_BATCH_API_KEY"] = key
    return env


def cli(env: dict[str, str], *argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producer.cli", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def jsonl(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def test_submit_a_file_and_a_prompt_read_status_and_cancel_with_redis_unreachable(
    server: str, acme_key: str, tmp_path: Path
):
    env = http_env(server, acme_key)
    path = jsonl(tmp_path / "jobs.jsonl", [f"http file {i}" for i in range(30)])
    done = cli(env, "submit", "--file", str(path), *TINY, "--json")
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)
    batch = sent["batch_id"]
    assert sent["job_ids"] == [job_id(batch, i) for i in range(30)] and sent["sent"] == 30

    canceled = cli(env, "cancel", batch)
    assert canceled.returncode == 0, canceled.stderr
    n = int(canceled.stdout.split()[1])
    assert n >= 1 and canceled.stdout.startswith("canceled ")
    status = cli(env, "status", batch, "--json")
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)["counts"]
    assert sum(counts.values()) == 30 and counts["canceled"] == n

    # The same file with the same flags is the same batch, as on Redis: nothing is sent twice.
    again = cli(env, "submit", "--file", str(path), *TINY, "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {**sent, "sent": 0, "skipped": 30}

    one = cli(env, "submit", "--prompt", "one over http", *TINY, "--json")
    assert one.returncode == 0, one.stderr
    [job] = json.loads(one.stdout)["job_ids"]
    shown = cli(env, "status", job, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["job_id"] == job


def test_submit_wait_then_results_download_and_retry_failed(server: str, acme_key: str, tmp_path: Path):
    env = http_env(server, acme_key)
    done = cli(env, "submit", "--prompt", "wait over http", *TINY, "--wait", "--json")
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()  # one JSON document, the final counts under "batch"
    sent = json.loads(line)
    assert sent["batch"]["done"] and sent["batch"]["counts"]["succeeded"] == 1
    [job] = sent["job_ids"]

    waited = cli(env, "wait", job, "--json")
    assert waited.returncode == 0 and json.loads(waited.stdout)["state"] == "succeeded"
    results = cli(env, "results", job, "--download", str(tmp_path / "out"), "--json")
    assert results.returncode == 0, results.stderr
    [result] = [json.loads(x) for x in results.stdout.splitlines()]
    assert result["job_id"] == job and Path(result["files"][0]).read_bytes().startswith(PNG)

    retried = cli(env, "retry-failed", sent["batch_id"], "--json")
    assert retried.returncode == 0, retried.stderr
    assert json.loads(retried.stdout) == {"batch_id": sent["batch_id"], "retried": [], "not_retried": []}


def test_a_file_of_only_bad_lines_prints_each_line_and_exits_1(server: str, acme_key: str, tmp_path: Path):
    path = tmp_path / "all-bad.jsonl"
    path.write_text('{"prompt": ""}\n{"prompt": "x", "height": 65}\nnot json\n')
    done = cli(http_env(server, acme_key), "submit", "--file", str(path))
    assert done.returncode == 1 and done.stdout == ""
    for line in (1, 2, 3):
        assert f"line {line}:" in done.stderr
    assert "no job was submitted: no line was valid" in done.stderr and "not_found" not in done.stderr


def test_an_upload_with_no_valid_line_is_a_422_carrying_the_line_errors(server: str, acme_key: str):
    with HttpClient(server, acme_key) as client:
        answer = client.http.post("/v1/batches", content=b'{"prompt": ""}\n{"prompt": 3}\n')
        result = client.submit_batch([{"prompt": ""}, {"prompt": "x", "num_inference_steps": 0}])
    assert answer.status_code == 422
    problem = answer.json()
    assert problem["error_count"] == 2 and [e["line"] for e in problem["errors"]] == [1, 2]
    assert problem["detail"] == "no line of the body is a valid job"
    assert result.jobs == 0 and result.error_count == 2 and [e.line for e in result.errors] == [1, 2]


def test_a_bad_key_is_a_clear_error_and_submits_nothing(server: str):
    env = http_env(server, "kb_not_a_key")
    for argv in (["status", "0123456789abcdef"], ["submit", "--prompt", "refused", *TINY]):
        done = cli(env, *argv)
        assert done.returncode == 1 and done.stdout == ""
        assert "401" in done.stderr and "unknown or revoked API key" in done.stderr
        assert "KANDINSKY_BATCH_API_KEY" in done.stderr


@pytest.mark.parametrize(
    "argv", [["watch", "b"], ["dead-letters"], ["worker"], ["worker", "check"], ["keys", "list"], ["demo"]]
)
def test_a_command_that_needs_redis_refuses_over_http(argv: list[str]):
    done = cli(http_env(DEAD_API, "kb_any"), *argv, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"`{argv[0]}` needs Redis and does not run over the HTTP API" in done.stderr
    assert "unset KANDINSKY_BATCH_API_URL and KANDINSKY_BATCH_API_KEY" in done.stderr


def test_what_the_api_cannot_do_is_refused_before_any_request(tmp_path: Path):
    env = http_env(DEAD_API, "kb_any")  # a request would fail as "cannot reach", exit 1
    csv = tmp_path / "jobs.csv"
    csv.write_text("prompt\na fox\n")
    manifest = tmp_path / "manifest.jsonl"
    refused = {
        "--strict": ["submit", "--prompt", "x", "--strict"],
        "--batch-id": ["submit", "--prompt", "x", "--batch-id", "b1"],
        "not CSV": ["submit", "--file", str(csv)],
        "--manifest": ["results", "b1", "--manifest", str(manifest)],
    }
    for words, argv in refused.items():
        done = cli(env, *argv)
        assert done.returncode == 2 and words in done.stderr, (argv, done.stderr)
    assert not manifest.exists()
    reached = cli(env, "status", "b1")  # the control: a command that does go to the API
    assert reached.returncode == 1 and "cannot reach the HTTP API at http://127.0.0.1:1/" in reached.stderr


@pytest.mark.parametrize("only", ["url", "key"])
def test_one_api_variable_alone_is_refused_rather_than_falling_back_to_redis(only: str):
    env = http_env(DEAD_API, None) if only == "url" else http_env(None, "kb_any")
    done = cli(env, "status", "b1")
    assert done.returncode == 1
    assert "set both KANDINSKY_BATCH_API_URL and KANDINSKY_BATCH_API_KEY" in done.stderr


@pytest.fixture
def slow_key(api_settings: Settings) -> str:
    """A key of 2 requests per second: reading a batch of a few jobs runs past it."""
    with Client(api_settings) as client:
        _, secret = ApiKeys(client.redis, client.status_store.keys).create("slow", rate_per_s=2)
    return secret


def test_results_of_a_batch_past_the_keys_rate_wait_out_429s(server: str, slow_key: str, tmp_path: Path):
    env = http_env(server, slow_key)
    path = jsonl(tmp_path / "slow.jsonl", [f"slow {i}" for i in range(4)])
    done = cli(env, "submit", "--file", str(path), *TINY, "--json")
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)
    # The batch, a page of jobs and each job: 6 requests against a bucket of 2.
    results = cli(env, "results", sent["batch_id"], "--json")
    assert results.returncode == 0, results.stderr
    assert [json.loads(x)["job_id"] for x in results.stdout.splitlines()] == sent["job_ids"]


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.send_response(200)
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def storage_host() -> Iterator[str]:
    """A plain HTTP server standing in for presigned storage URLs; it records what it was sent."""
    _Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_a_download_from_another_host_is_not_sent_the_api_key(storage_host: str, tmp_path: Path):
    with HttpClient(DEAD_API, "kb_secret") as client:
        path = client._download(f"{storage_host}/bucket/0.png?X-Amz-Signature=abc", tmp_path, 0)
    assert path.read_bytes() == PNG
    assert _Recorder.seen == [None]


def test_the_api_key_stays_out_of_child_environments_and_printed_settings():
    settings = Settings(api_url="http://api.example:8000", api_key="kb_secret_value")
    env = settings.as_env()
    assert not {"KANDINSKY_BATCH_API_URL", "KANDINSKY_BATCH_API_KEY"} & env.keys()
    assert "kb_secret_value" not in repr(settings) + json.dumps(env) + settings.model_dump_json()
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "kb_secret_value"
