"""Bad inputs end to end: each is refused at submit naming the reason, or fails its job with a code.

Two real workers take the corpus (tests/helpers/corpus.py): `main` serves every mode with https
inputs allowed and small input caps; `plain` serves img2img only, with the defaults
(https inputs off). Bad inputs go in through the CLI and straight onto the queues as raw
Celery messages (raw queue items: tests/integration/test_queue_garbage.py). Throughout, the workers keep serving, every
message is consumed, and batch counters add up; a good job submitted last succeeds.
"""

from __future__ import annotations

import errno
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from celery import Celery

from kandinsky_batch.broker import make_celery
from kandinsky_batch.errors import NotFound
from kandinsky_batch.keys import TASK_NAME, job_id
from kandinsky_batch.schema import JobState, JobStatus, Mode
from kandinsky_batch.settings import Settings
from kandinsky_batch.storage.file import file_root
from producer.cli.main import main
from producer.client import Client
from tests.conftest import WorkerProcess, make_settings, settings_env
from tests.helpers.corpus import (
    BAD_SPEC,
    CLI_FAILURES,
    MAX_INPUT_BYTES,
    MAX_INPUT_PIXELS,
    NOT_AN_IMAGE,
    RAW_FAILURES,
    RAW_UNNAMED,
    SUBMIT_REFUSALS,
    TINY_FLAGS,
    Case,
    envelope,
    jsonl,
)

pytestmark = pytest.mark.integration

WAIT_S = 30


# -- two workers, their settings, clients and Celery apps ------------------------------------


@pytest.fixture(scope="module")
def settings_by_name(redis_url: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory):
    main_root = tmp_path_factory.mktemp("bad-main")
    (main_root / "inputs").mkdir()
    return {
        "main": make_settings(
            redis_url,
            tiny_models,
            main_root,
            allow_https_inputs=True,
            max_input_bytes=MAX_INPUT_BYTES,
            max_input_pixels=MAX_INPUT_PIXELS,
            input_roots=[main_root / "inputs"],
        ),
        "plain": make_settings(
            redis_url, tiny_models, tmp_path_factory.mktemp("bad-plain"), modes=["img2img"]
        ),
    }


@pytest.fixture(scope="module")
def workers(settings_by_name, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, WorkerProcess]]:
    logs = tmp_path_factory.mktemp("bad-logs")
    procs = {name: WorkerProcess(s, logs / f"{name}.log") for name, s in settings_by_name.items()}
    try:
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(WorkerProcess.start, procs.values()))
        yield procs
    finally:
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(WorkerProcess.stop, procs.values()))


@pytest.fixture(scope="module")
def clients(settings_by_name) -> Iterator[dict[str, Client]]:
    made = {name: Client(s) for name, s in settings_by_name.items()}
    yield made
    for c in made.values():
        c.close()


@pytest.fixture(scope="module")
def apps(settings_by_name) -> Iterator[dict[str, Celery]]:
    made = {name: make_celery(s) for name, s in settings_by_name.items()}
    yield made
    for app in made.values():
        app.close()


@pytest.fixture
def use_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[Settings], None]:
    """The CLI reads its settings from the environment, as in production."""

    def use(settings: Settings) -> None:
        for key in [k for k in os.environ if k.startswith("KANDINSKY_BATCH_")]:
            monkeypatch.delenv(key)
        for key, value in settings_env(settings).items():
            if key.startswith("KANDINSKY_BATCH_"):
                monkeypatch.setenv(key, value)

    return use


# -- helpers ------------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """Whitespace collapsed, so a message wrapped by the terminal still matches."""
    return " ".join(text.split())


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict[str, Any] | None, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    out = None
    lines = captured.out.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        out = json.loads(lines[-1])
    return code, out, one_line(captured.err)


def submit_argv(case: Case, tmp_path: Path, inputs: Path) -> list[str]:
    argv = ["submit", *TINY_FLAGS, *(a.replace("{inputs}", str(inputs)) for a in case.argv)]
    if case.lines is not None:
        path = tmp_path / f"jobs{case.suffix}"
        path.write_bytes(case.lines)
        argv += ["--file", str(path)]
    return [*argv, "--json"]


def inputs_of(settings: Settings) -> Path:
    return settings.input_roots[0] if settings.input_roots else file_root(settings.storage_url)


def wait_job(client: Client, jid: str, worker: WorkerProcess, timeout: float = WAIT_S) -> JobStatus:
    """A job's final status; raw jobs only exist once the worker has read their message."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status = client.status_store.job(jid)
        except NotFound:
            status = None
        if status is not None and status.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED):
            return status
        assert worker.alive(), f"the worker died while {jid} was pending:\n{worker.log()}"
        assert time.monotonic() < deadline, f"{jid} not finished after {timeout} s: {status}"
        time.sleep(0.05)


def assert_failed(status: JobStatus, code: str, expect: tuple[str, ...]) -> None:
    assert status.state is JobState.FAILED, f"expected a {code} failure, got {status}"
    assert status.error is not None and status.error.code == code, f"{status.error}"
    for text in expect:
        assert text in status.error.message, f"{text!r} not in {status.error.message!r}"


def assert_counts_add_up(client: Client, batch_id: str) -> None:
    batch = client.status_store.batch(batch_id)
    assert sum(batch.counts.values()) == batch.total, batch


def unacked_on(client: Client, queue: str) -> int:
    """Messages of `queue` delivered but not acknowledged (kombu's Redis transport keeps them here)."""
    count = 0
    for raw in client.redis.hvals("unacked"):
        try:
            count += json.loads(raw)[2] == queue
        except (ValueError, TypeError, IndexError):
            continue
    return count


def probe(app: Celery, client: Client, worker: WorkerProcess, queue: str) -> JobStatus:
    """Send a cheap job that fails at the second validation; once it has failed, all before it was read."""
    batch_id = f"probe-{uuid.uuid4().hex[:8]}"
    app.send_task(TASK_NAME, kwargs=envelope(batch_id, BAD_SPEC), queue=queue)
    return wait_job(client, job_id(batch_id, 0), worker, timeout=15)


def assert_drained(client: Client, queue: str) -> None:
    deadline = time.monotonic() + 5
    while (waiting := sum(client.status_store.fair.waiting(queue).values())) or unacked_on(client, queue):
        assert time.monotonic() < deadline, (
            f"{queue}: {waiting} waiting, {unacked_on(client, queue)} unacknowledged"
        )
        time.sleep(0.05)


# -- the corpus ---------------------------------------------------------------------------------


def recorded_jobs(client: Client) -> int:
    return sum(1 for _ in client.redis.scan_iter(match=f"{client.settings.key_prefix}:job:*", count=1000))


@pytest.mark.parametrize("case", SUBMIT_REFUSALS)
def test_refused_at_submit_naming_the_reason(
    case: Case, settings_by_name, clients, use_env, tmp_path, capsys
):
    # Given the CLI with a worker's settings in the environment
    use_env(settings_by_name["main"])
    before = recorded_jobs(clients["main"])
    # When a bad job is submitted
    code, out, err = run_cli(capsys, submit_argv(case, tmp_path, tmp_path))
    # Then the CLI exits non-zero, names the reason on stderr, and records and sends nothing
    assert code != 0
    for text in case.expect:
        assert text in err, f"{text!r} not in stderr: {err!r}"
    if out is not None:
        assert out["sent"] == 0 and out["job_ids"] == []
    assert recorded_jobs(clients["main"]) == before


@pytest.mark.parametrize("case", CLI_FAILURES)
def test_accepted_at_submit_then_failed_by_the_worker_with_a_code(
    case: Case, workers, clients, settings_by_name, use_env, tmp_path, capsys
):
    settings = settings_by_name[case.worker]
    use_env(settings)
    code, out, err = run_cli(capsys, submit_argv(case, tmp_path, inputs_of(settings)))
    assert code == 0, err
    assert out is not None and out["sent"] == 1
    [jid] = out["job_ids"]
    client = clients[case.worker]
    assert_failed(wait_job(client, jid, workers[case.worker]), case.code or "", case.expect)
    assert_counts_add_up(client, out["batch_id"])


@pytest.mark.parametrize("case", RAW_FAILURES)
def test_raw_message_fails_the_jobs_it_names_with_a_code(
    case: Case, workers, clients, apps, settings_by_name
):
    # Given a message put straight onto a worker's queue (no producer-side validation)
    assert case.message is not None
    settings, client = settings_by_name[case.worker], clients[case.worker]
    apps[case.worker].send_task(TASK_NAME, kwargs=case.message, queue=settings.queue_for(case.mode))
    batch_id = case.message["batch_id"]
    # Then every job it names fails with the code and a message naming the reason
    for index in case.jobs:
        status = wait_job(client, job_id(batch_id, index), workers[case.worker])
        assert_failed(status, case.code or "", case.expect)
    # ... and the batch still adds up and can be handled as a whole
    assert_counts_add_up(client, batch_id)
    assert client.cancel(batch_id) == 0
    assert workers[case.worker].alive()


@pytest.mark.parametrize("case", RAW_UNNAMED)
def test_raw_message_naming_no_job_is_consumed_and_the_worker_keeps_serving(
    case: Case, workers, clients, apps, settings_by_name
):
    settings, client, app = settings_by_name["main"], clients["main"], apps["main"]
    queue = settings.queue_for(Mode.TEXT2IMG)
    app.send_task(TASK_NAME, args=list(case.args) or None, kwargs=case.message, queue=queue)
    # The worker reads on: a job sent after the bad message fails for its own reason
    assert_failed(probe(app, client, workers["main"], queue), "invalid_spec", ("height",))
    assert_drained(client, queue)
    assert workers["main"].alive()
    # Nothing was recorded under the batch the message half-named
    named = (case.message or {}).get("batch_id")
    if named not in (None, ""):
        with pytest.raises(NotFound):
            client.status_store.batch(str(named))


def test_a_file_mixing_good_and_bad_lines_runs_the_good_ones_and_counts_add_up(
    workers, clients, settings_by_name, use_env, tmp_path, capsys
):
    # Given a file with good lines, lines bad at submit, a line bad only at the worker, and a blank line
    use_env(settings_by_name["main"])
    body = b"".join(
        [
            jsonl({"prompt": "a good fox"}),
            b'{"prompt": "caf\xe9"}\n',  # line 2: Latin-1, not UTF-8
            b'{"prompt": "a fox"\n',  # line 3: malformed JSON
            jsonl({"prompt": "a fox", "height": 100}),  # line 4: invalid spec
            jsonl({"prompt": "a fox", "mode": "img2img", "image": NOT_AN_IMAGE}),  # line 5: bad at the worker
            jsonl({"prompt": "another good fox"}),  # line 6
            b"\n",  # line 7: blank, skipped
            jsonl({"prompt": "a fox", "colour": "red"}),  # line 8: unknown field
        ]
    )
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(body)
    # When it is submitted through the CLI
    code, out, err = run_cli(capsys, ["submit", "--file", str(path), *TINY_FLAGS, "--json"])
    # Then the CLI exits 1, naming each bad line and its reason, and sends the others
    assert code == 1 and out is not None
    for text in (
        "line 2: not UTF-8",
        "line 3: malformed JSON",
        "line 4: height: Input should be a multiple of 64",
        "line 8: colour: Extra inputs are not permitted",
    ):
        assert text in err, f"{text!r} not in stderr: {err!r}"
    assert [e["line"] for e in out["errors"]] == [2, 3, 4, 8]
    assert out["sent"] == 3
    client = clients["main"]
    batch_id = out["batch_id"]
    assert sorted(out["job_ids"]) == [job_id(batch_id, i) for i in (0, 4, 5)]
    # ... the good lines ran, the worker-side bad line failed alone, and the counters add up
    good, bad, other = (
        wait_job(client, job_id(batch_id, i), workers["main"], timeout=120) for i in (0, 4, 5)
    )
    assert good.state is JobState.SUCCEEDED and other.state is JobState.SUCCEEDED
    assert Path(urlparse(good.outputs[0]).path).exists()
    assert_failed(bad, "bad_input", ("image: not a readable PNG, JPEG or WebP image",))
    batch = client.status_store.batch(batch_id)
    assert batch.total == 3 and batch.done
    assert batch.counts[JobState.SUCCEEDED] == 2 and batch.counts[JobState.FAILED] == 1
    assert sum(batch.counts.values()) == batch.total


def test_a_fifo_input_fails_at_once_instead_of_hanging_the_worker(workers, clients, apps, settings_by_name):
    # Given a named pipe inside a folder inputs may come from, named as a job's input image
    settings, client, worker = settings_by_name["plain"], clients["plain"], workers["plain"]
    fifo = inputs_of(settings) / f"input-{uuid.uuid4().hex[:6]}.png"
    os.mkfifo(fifo)
    batch_id = f"fifo-{uuid.uuid4().hex[:6]}"
    spec = {"prompt": "a fox", "mode": "img2img", "image": fifo.as_uri()}
    apps["plain"].send_task(
        TASK_NAME, kwargs=envelope(batch_id, spec), queue=settings.queue_for(Mode.IMG2IMG)
    )
    try:
        # Then the job fails promptly, naming the reason
        status = wait_job(client, job_id(batch_id, 0), worker, timeout=5)
    except AssertionError as exc:
        pytest.fail(f"the worker is stuck reading a named pipe as an input image: {exc}")
    finally:
        _release(fifo)  # a worker blocked opening the pipe reads EOF and moves on
    assert_failed(status, "bad_input", ("not a regular file",))


def _release(fifo: Path) -> None:
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: nobody is reading it
            raise
    else:
        os.close(fd)


def test_a_bad_line_is_reported_on_one_stderr_line_however_long_its_reason(
    settings_by_name, use_env, tmp_path, capsys
):
    use_env(settings_by_name["main"])
    path = tmp_path / "long.jsonl"
    path.write_bytes(jsonl({"prompt": 5, "height": 100, "colour": "red", "num_inference_steps": 0}))
    capsys.readouterr()
    assert main(["submit", "--file", str(path)]) == 1
    err = capsys.readouterr().err
    [report] = [line for line in err.splitlines() if line.startswith("line 1:")]
    for name in ("prompt:", "height:", "colour:", "num_inference_steps:"):
        assert name in report, f"{name!r} is not on the line that reports line 1:\n{err}"


def test_after_the_corpus_the_worker_is_alive_and_a_good_job_succeeds(
    workers, clients, settings_by_name, use_env, capsys
):
    # The main worker took every case but the queue garbage; the plain one may have been restarted
    assert workers["main"].alive()
    use_env(settings_by_name["main"])
    code, out, err = run_cli(capsys, ["submit", "--prompt", "a lighthouse at dawn", *TINY_FLAGS, "--json"])
    assert code == 0 and out is not None, err
    [jid] = out["job_ids"]
    status = wait_job(clients["main"], jid, workers["main"], timeout=120)
    assert status.state is JobState.SUCCEEDED and status.attempts == 1
    assert Path(urlparse(status.outputs[0]).path).exists()
