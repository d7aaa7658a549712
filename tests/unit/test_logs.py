"""The log setup (kandinsky_batch/logs.py): format choice, JSON fields, the plain text look, uvicorn."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from io import StringIO
from typing import Any

import pytest
import uvicorn

from kandinsky_batch.logs import bind_process, log_fields, logging_config, resolve_format, setup_logging

LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each test reconfigures the root logger; put back what pytest had, and no process fields."""
    saved = {
        name: (
            logging.getLogger(name).handlers[:],
            logging.getLogger(name).level,
            logging.getLogger(name).propagate,
        )
        for name in LOGGERS
    }
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
    logging.captureWarnings(False)
    bind_process()


def json_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines()]


def test_auto_is_text_on_a_terminal_and_json_otherwise():
    leader, follower = os.openpty()  # a real terminal device
    with os.fdopen(follower, "w") as terminal:
        assert resolve_format("auto", terminal) == "text"
    os.close(leader)
    assert resolve_format("auto", StringIO()) == "json"
    assert resolve_format("json", StringIO()) == "json"
    assert resolve_format("text", StringIO()) == "text"


def test_json_lines_carry_the_process_and_job_fields(capsys):
    assert setup_logging("json") == "json"  # stderr is pytest's capture here, not a terminal
    bind_process(worker="w1")
    log = logging.getLogger("kb.test")
    log.info("plain %s", "line")
    with log_fields(job_id="b-0", batch_id="b", mode="text2img", attempt=2):
        log.info("about a job")
        with log_fields(job_id="b-1"):  # nested: adds to (and overrides) the outer fields
            log.warning("about another job")
        log.info("explicit wins", extra={"attempt": 3})
    log.info("after the block")
    plain, job, other, explicit, after = json_lines(capsys.readouterr().err)
    assert plain["message"] == "plain line" and plain["level"] == "INFO" and plain["logger"] == "kb.test"
    assert plain["worker"] == "w1" and "job_id" not in plain
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00$", plain["time"])
    assert {k: job[k] for k in ("job_id", "batch_id", "mode", "attempt", "worker")} == {
        "job_id": "b-0",
        "batch_id": "b",
        "mode": "text2img",
        "attempt": 2,
        "worker": "w1",
    }
    assert (other["job_id"], other["batch_id"], other["level"]) == ("b-1", "b", "WARNING")
    assert explicit["attempt"] == 3
    assert "job_id" not in after


def test_job_fields_stay_in_their_thread(capsys):
    setup_logging("json")
    log = logging.getLogger("kb.test")
    with log_fields(job_id="b-0"):
        thread = threading.Thread(target=log.info, args=("from a heartbeat-like thread",))
        thread.start()
        thread.join()
    [line] = json_lines(capsys.readouterr().err)
    assert "job_id" not in line


def test_a_traceback_is_one_field_of_one_line(capsys):
    setup_logging("json")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("kb.test").exception("it failed")
    [line] = json_lines(capsys.readouterr().err)
    assert line["message"] == "it failed"
    assert line["exc_info"].startswith("Traceback") and "ValueError: boom" in line["exc_info"]


def test_text_keeps_the_plain_look_and_shows_no_fields(capsys):
    assert setup_logging("text") == "text"
    bind_process(worker="w1")
    with log_fields(job_id="b-0"):
        logging.getLogger("kb.test").info("hello")
    err = capsys.readouterr().err
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO kb\.test: hello\n", err), err


def test_uvicorn_takes_the_same_config_and_logs_json(capsys):
    uvicorn.Config("an.app:factory", factory=True, log_config=logging_config("json"))  # configures logging
    logging.getLogger("uvicorn.error").info("Started server process")
    logging.getLogger("uvicorn.access").info('%s - "%s %s"', "127.0.0.1:5000", "GET", "/healthz")
    started, access = json_lines(capsys.readouterr().err)
    assert (started["logger"], started["message"]) == ("uvicorn.error", "Started server process")
    assert access["message"] == '127.0.0.1:5000 - "GET /healthz"'


FORGED = "\nFAKE 2026-01-01 00:00:00,000 INFO forged: line"


def test_text_escapes_control_characters_so_one_call_is_one_line(capsys):
    setup_logging("text")
    log = logging.getLogger("kb.test")
    log.warning("cannot read %s: %s", f"file:///in/a.png{FORGED}", "gone")
    log.info(f"in the message{FORGED}\r\t\x1b[2K\u2028\x85\x00")
    try:
        raise ValueError(f"boom{FORGED}")
    except ValueError:
        log.exception("it failed")
    argument, message, traceback = capsys.readouterr().err.splitlines()
    assert argument.endswith(
        r"cannot read file:///in/a.png\nFAKE 2026-01-01 00:00:00,000 INFO forged: line: gone"
    )
    assert message.endswith(
        r"in the message\nFAKE 2026-01-01 00:00:00,000 INFO forged: line\r\t\x1b[2K\u2028\x85\x00"
    )
    assert r"it failed\nTraceback (most recent call last):\n" in traceback
    assert r"ValueError: boom\nFAKE 2026-01-01" in traceback


def test_json_stays_one_line_whatever_the_message_holds(capsys):
    setup_logging("json")
    text = f"a{FORGED}\r\x1b[2K\u2028\u2029\x85\x00 end"
    logging.getLogger("kb.test").warning("cannot read %s", text)
    [line] = json_lines(capsys.readouterr().err)  # splitlines splits on U+2028, U+2029 and U+0085 too
    assert line["message"] == f"cannot read {text}"
