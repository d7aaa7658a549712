"""A user's mistake is one clear line and a non-zero exit, end to end: a worker given a model it cannot
load, a CSV file with a quote left open, an empty dead-letter list.

Workers here are real processes (producer/launch.py) that fail at start; the CLI runs in this process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kandinsky_batch.settings import DEFAULT_DECODER, DEFAULT_INPAINT, DEFAULT_PRIOR
from producer.cli.main import main
from producer.client import Client
from tests.conftest import WorkerProcess, make_settings

pytestmark = pytest.mark.integration

START_S = 90  # importing torch and diffusers on a busy 2-core runner; a model load would take longer


def failed_start(settings, log: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Start a worker that must refuse to: (seconds until it exited non-zero, its log)."""
    proc = WorkerProcess(settings, log, env=env)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="the worker exited with 1"):
        proc.start(timeout=START_S)
    return time.monotonic() - started, proc.log(tail=100_000)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_worker_with_a_wrong_model_path_exits_with_one_line_naming_the_setting(
    redis_url, tiny_models, tmp_path, log_format
):
    settings = make_settings(redis_url, tiny_models, tmp_path, decoder_model="/nope", log_format=log_format)
    _, log = failed_start(settings, tmp_path / "worker.log")
    assert "Traceback" not in log
    if log_format == "json":
        records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        errors = [r["message"] for r in records if r["level"] == "ERROR"]
    else:
        errors = [line for line in log.splitlines() if " ERROR " in line]
    [error] = errors
    assert "KANDINSKY_BATCH_DECODER_MODEL=/nope: no such folder" in error
    assert "a local diffusers folder or a Hugging Face id" in error
    assert "loading prior" not in log  # told before any model loads


def test_a_worker_with_hub_ids_it_cannot_fetch_names_each_setting_and_the_tiny_model(
    redis_url, tiny_models, tmp_path
):
    settings = make_settings(
        redis_url,
        tiny_models,
        tmp_path,
        prior_model=DEFAULT_PRIOR,
        decoder_model=DEFAULT_DECODER,
        inpaint_model=DEFAULT_INPAINT,
        log_format="text",
    )
    # Offline, with a cache of its own: whatever this machine has cached, nothing can be fetched.
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    seconds, log = failed_start(settings, tmp_path / "worker.log", env)
    assert "Traceback" not in log
    [error] = [line for line in log.splitlines() if " ERROR " in line]
    for variable, hub_id in (
        ("PRIOR", DEFAULT_PRIOR),
        ("DECODER", DEFAULT_DECODER),
        ("INPAINT", DEFAULT_INPAINT),
    ):
        assert f"KANDINSKY_BATCH_{variable}_MODEL={hub_id}: HF_HUB_OFFLINE is set" in error
    assert "not in the local cache" in error and "kandinsky-batch models make-tiny DIR" in error
    assert seconds < START_S


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_csv_quote_left_open_stops_the_submit_at_its_line_and_exits_1(cli_env, capsys, tmp_path):
    path = tmp_path / "open-quote.csv"
    path.write_text('prompt\na red fox\n"a blue fox\na green fox\na grey fox\n')
    code, out, err = run(capsys, "submit", "--file", str(path), "--json")
    assert code == 1, err
    sent = json.loads(out)
    assert sent["errors"] == [
        {"line": 3, "reason": "unterminated quoted field starting at line 3 (reading stopped here)"}
    ]
    assert len(sent["job_ids"]) == 1  # the row before the quote; nothing after it became a prompt


def test_dead_letters_says_so_when_there_are_none(cli_env, capsys, module_settings):
    with Client(module_settings) as client:
        assert client.dead_letters(1) == []
    code, out, err = run(capsys, "dead-letters")
    assert code == 0 and out == "" and err.strip() == "no dead letters"
    code, out, err = run(capsys, "dead-letters", "--json")
    assert code == 0 and out == "" and err.strip() == "no dead letters"  # stdout: JSON lines only
