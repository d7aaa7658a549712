"""A user's mistake is one clear line and a non-zero exit: a stopped Redis, a URL that is not a Redis
URL, a setting with a bad value, a bare `submit`, a CSV quote left open. No traceback, no pydantic dump.

The CLI runs in this process (`main(argv)`) with its settings in the environment, as in production.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from kandinsky_batch.settings import Settings, describe_settings_error, load_settings
from producer.cli.base import CliContext
from producer.cli.main import main
from producer.lines import LineError, read_csv

PASSWORD = "hunter2"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No `KANDINSKY_BATCH_*` variable but those a test sets."""
    for key in [k for k in os.environ if k.startswith("KANDINSKY_BATCH_")]:
        monkeypatch.delenv(key)
    return monkeypatch


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def dead_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- 1. Redis not there: one line in seconds, not ~40 s of retries -----------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "some-batch"],
        ["submit", "--prompt", "a cat"],
        ["watch", "some-batch"],
        ["dead-letters"],
        ["keys", "list"],
        ["export", "some-batch", "--to", "file:///tmp/nowhere"],
    ],
)
def test_a_stopped_redis_is_one_line_naming_the_masked_url_within_seconds(env, capsys, argv):
    port = dead_port()
    env.setenv("KANDINSKY_BATCH_REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    started = time.monotonic()
    code, out, err = run(capsys, *argv)
    assert time.monotonic() - started < 5, "the first contact must not wait out the client's retries"
    assert code == 1 and out == ""
    [line] = err.strip().splitlines()
    assert f"cannot reach Redis at redis://***@127.0.0.1:{port}/0" in line
    assert "is Redis running" in line and PASSWORD not in line


def test_the_client_after_the_first_ping_keeps_its_retries_for_the_rest_of_the_run(monkeypatch):
    monkeypatch.setattr("producer.cli.base.ping_once", lambda url: None)  # Redis answered it
    with CliContext(Settings(redis_url=f"redis://127.0.0.1:{dead_port()}/0")).redis() as client:
        assert client.redis.get_retry().get_retries() == 12  # a Redis restart mid-run is ridden out


# -- 2. a URL that is not a Redis URL --------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://localhost:6379", "'http://localhost:6379'"),
        ("not a url", "'not a url'"),
        ("localhost:6379", "'localhost:6379'"),
        (f"http://:{PASSWORD}@redis:6379/0", "'http://***@redis:6379/0'"),
    ],
)
def test_a_redis_url_of_another_scheme_is_one_line_naming_what_is_allowed(env, capsys, url, shown):
    env.setenv("KANDINSKY_BATCH_REDIS_URL", url)
    code, out, err = run(capsys, "status", "some-batch")
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert f"KANDINSKY_BATCH_REDIS_URL={shown}: not a Redis URL" in line
    assert "redis://" in line and "rediss://" in line
    assert PASSWORD not in line and "Traceback" not in err


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://:pw@redis:6380/1", "REDIS://host"])
def test_redis_and_rediss_urls_are_taken(url):
    assert Settings(redis_url=url).redis_url == url


# -- 3. a setting with a bad value -------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [["status", "some-batch"], ["worker"], ["api"], ["submit", "--prompt", "x"]]
)
def test_each_bad_setting_is_one_line_with_its_variable_value_and_what_is_allowed(env, capsys, command):
    env.setenv("KANDINSKY_BATCH_CHUNK_SIZE", "many")
    env.setenv("KANDINSKY_BATCH_DEVICE", "gpu")
    code, out, err = run(capsys, *command)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    [chunk] = [line for line in lines if "KANDINSKY_BATCH_CHUNK_SIZE='many'" in line]
    assert "a whole number from 1 to 10000" in chunk
    [device] = [line for line in lines if "KANDINSKY_BATCH_DEVICE='gpu'" in line]
    assert "auto, cpu, cuda, cuda:N or mps" in device
    assert "pydantic" not in err and "validation error" not in err


def test_a_list_setting_names_its_bad_items(env):
    env.setenv("KANDINSKY_BATCH_MODES", "text2img,txt2img,paint")
    with pytest.raises(ValidationError) as caught:
        Settings()
    line = describe_settings_error(caught.value)
    assert line.startswith("invalid setting KANDINSKY_BATCH_MODES: items 'txt2img', 'paint':")
    assert "'text2img', 'img2img', 'inpaint' or 'interpolate'" in line


def test_entry_points_outside_the_cli_print_the_same_lines_and_exit_2(env, capsys):
    env.setenv("KANDINSKY_BATCH_API_PORT", "http")
    with pytest.raises(SystemExit) as exited:
        load_settings()
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == "invalid setting KANDINSKY_BATCH_API_PORT='http': should be a whole number from 1 to 65535"


# -- 7. a bare submit ------------------------------------------------------------------------------


def test_a_bare_submit_says_what_to_give(env, capsys):
    code, out, err = run(capsys, "submit")
    assert code == 2 and out == ""
    assert "give --prompt TEXT (repeatable) or --file PATH" in err and "not both" not in err


def test_a_submit_with_a_prompt_and_a_file_says_not_both(env, capsys, tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"prompt": "x"}\n')
    code, _, err = run(capsys, "submit", "--prompt", "x", "--file", str(path))
    assert code == 2 and "give --prompt TEXT (repeatable) or --file PATH, not both" in err


# -- 6. a CSV quote left open ----------------------------------------------------------------------


def test_an_unterminated_csv_quote_stops_reading_at_the_line_it_opened_on(tmp_path: Path):
    path = tmp_path / "open-quote.csv"
    path.write_text('prompt,seed\na cat,1\n"a dog,2\na fox,3\na owl,4\n')
    rows = list(read_csv(path))
    assert rows[0][1] == {"prompt": "a cat", "seed": "1"}
    [(_, error)] = rows[1:]  # nothing after the bad line is read as a row
    assert isinstance(error, LineError) and error.line == 3
    assert error.reason.startswith("unterminated quoted field starting at line 3")


def test_a_quote_open_past_the_field_limit_names_the_line_it_opened_on(tmp_path: Path):
    path = tmp_path / "long-open-quote.csv"
    path.write_text('prompt\na cat\n"a dog\n' + "more words of the same field\n" * 10_000)
    [_, (_, error)] = list(read_csv(path))
    assert isinstance(error, LineError) and error.line == 3
    assert "in a quoted field open since line 3" in error.reason


def test_a_closed_multi_line_quoted_field_is_one_prompt(tmp_path: Path):
    path = tmp_path / "multi-line.csv"
    path.write_text('prompt\n"a cat\non a mat"\na dog\n')
    assert [row for _, row in read_csv(path)] == [{"prompt": "a cat\non a mat"}, {"prompt": "a dog"}]
