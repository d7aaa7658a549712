"""`submit --file` with Parquet and CSV datasets and `--seeds-per-prompt`, on a real Redis (no worker).

The jobs stay queued, so what was recorded (the store) and what was sent (the queue's messages)
are read back directly: every job once, with the seeds its line gives it, across resubmits.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kandinsky_batch.batch_ids import batch_id_for_file
from kandinsky_batch.envelope import call_kwargs
from kandinsky_batch.keys import TASK_NAME, JobRef
from kandinsky_batch.schema import JobState, JobStatus, Mode
from kandinsky_batch.settings import Settings
from kandinsky_batch.wire import parse_message
from producer.cli.main import main
from producer.client import Client
from producer.lines import read_lines
from producer.submit import Submitter, submit_lines
from tests.conftest import make_settings
from tests.helpers.tenants import waiting_messages

pytestmark = pytest.mark.integration

SEEDS = [7, None, 1000, None, 42]  # lines 2 and 4 get seeds derived from the batch and line


@pytest.fixture
def settings(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings of our own (no models: nothing runs), in the environment as the CLI reads them."""
    settings = make_settings(redis_url, tmp_path, tmp_path, chunk_size=4)
    for key in [k for k in os.environ if k.startswith("KANDINSKY_BATCH_")]:
        monkeypatch.delenv(key)
    for key, value in settings.as_env().items():
        monkeypatch.setenv(key, value)
    yield settings
    with Client(settings) as client:  # leave the shared Redis as we found it
        for prefix in {settings.key_prefix, settings.queue_prefix}:
            keys = list(client.redis.scan_iter(f"{prefix}*"))
            if keys:
                client.redis.delete(*keys)


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """5 rows in 3 row groups, with a column that is not a spec field."""
    path = tmp_path / "prompts.parquet"
    table = pa.table(
        {
            "caption": [f"a dataset caption {i}" for i in range(5)],
            "seed": pa.array(SEEDS, type=pa.int64()),
            "height": [64] * 5,
            "width": [64] * 5,
            "source_url": [f"https://example.com/{i}.jpg" for i in range(5)],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def submit_json(capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> dict[str, Any]:
    code, out, err = run(capsys, "submit", "--file", str(path), "--json", *extra)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def index_of(job: JobStatus) -> int:
    ref = JobRef.parse(job.job_id)
    assert ref is not None
    return ref.index


def queued_seeds(client: Client, settings: Settings) -> list[tuple[str, int, int]]:
    """`(batch, index, seed)` of every job in every message on the text2img queue lists."""
    found = []
    for raw in waiting_messages(client.status_store, settings.queue_for(Mode.TEXT2IMG)):
        message = call_kwargs(raw, TASK_NAME)
        assert message is not None
        parsed = parse_message(message)
        found += [(parsed.batch_id, e.index, e.seed) for e in parsed.entries]
    return found


def test_seeds_per_prompt_on_parquet_makes_k_jobs_a_line_and_a_resubmit_sends_none(
    client: Client, settings: Settings, dataset: Path, capsys: pytest.CaptureFixture[str]
):
    argv = ["--prompt-column", "caption", "--seeds-per-prompt", "3", "--steps", "2"]
    code, out, err = run(capsys, "submit", "--file", str(dataset), "--json", *argv)
    assert code == 0, err
    first = json.loads(out)
    assert first["sent"] == 15 and first["skipped"] == 0 and first["errors"] == []
    assert "ignored columns (not job spec fields): source_url" in err
    batch = first["batch_id"]
    assert batch == batch_id_for_file(dataset, {"num_inference_steps": 2}, "caption", 3)
    jobs = list(client.status_store.jobs(batch))
    assert [j.job_id for j in jobs] == first["job_ids"] and len(jobs) == 15
    assert all(j.state is JobState.QUEUED for j in jobs)
    seeds = [j.seed for j in jobs]
    for line in range(5):
        base = seeds[line * 3]
        assert base is not None and seeds[line * 3 : line * 3 + 3] == [base, base + 1, base + 2]
        if SEEDS[line] is not None:
            assert base == SEEDS[line]
    # Sent once each, with the seeds recorded
    assert sorted(queued_seeds(client, settings)) == [(batch, i, s) for i, s in enumerate(seeds)]
    # When the same file is submitted again with the same options, nothing goes out
    again = submit_json(capsys, dataset, *argv)
    assert again["batch_id"] == batch and again["sent"] == 0 and again["skipped"] == 15
    assert len(queued_seeds(client, settings)) == 15
    # Other options are another batch
    other = submit_json(capsys, dataset, "--prompt-column", "caption", "--seeds-per-prompt", "2")
    assert other["batch_id"] != batch and other["sent"] == 10


def test_an_interrupted_submit_then_a_full_one_sends_every_job_once_with_the_same_seeds(
    client: Client, settings: Settings, dataset: Path, capsys: pytest.CaptureFixture[str]
):
    batch = batch_id_for_file(dataset, {}, "caption", 3)
    # Given a submit that died while reading row 4: rows 1-3 were read, their first 8 jobs went
    # out (8 chunks of 1, one pipeline), the 9th was still in memory
    one = settings.model_copy(update={"chunk_size": 1})
    interrupted = Submitter(one, client.status_store, batch)

    def dying() -> Iterator[tuple[int, Any]]:
        for number, row in read_lines(dataset, "caption"):
            if number == 4:
                raise RuntimeError("the producer died here")
            yield number, row

    with pytest.raises(RuntimeError):
        submit_lines(interrupted, dying(), {}, seeds_per_prompt=3)
    assert interrupted.result.sent == 8
    sent_before = {(i, s) for _, i, s in queued_seeds(client, settings)}
    assert len(sent_before) == 8
    # When the whole file is submitted again
    result = submit_json(capsys, dataset, "--prompt-column", "caption", "--seeds-per-prompt", "3")
    # Then only what was never sent goes, every job once, and the first ones kept their seeds
    assert result["batch_id"] == batch and result["sent"] == 7 and result["skipped"] == 8
    queued = queued_seeds(client, settings)
    assert Counter(i for _, i, _ in queued) == Counter(range(15))
    assert sent_before <= {(i, s) for _, i, s in queued}
    jobs = list(client.status_store.jobs(batch))
    assert [(index_of(j), j.seed) for j in jobs] == sorted((i, s) for _, i, s in queued)
    line3 = [j.seed for j in jobs[6:9]]  # two went before the crash, one after: still consecutive
    assert line3[0] is not None and line3 == [line3[0], line3[0] + 1, line3[0] + 2]


def test_csv_with_a_prompt_column_and_seeds_per_prompt(
    client: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    path = tmp_path / "d.csv"
    path.write_text("id,caption,seed\n1,a fox,5\n2,,6\n3,an owl,\n")
    code, out, err = run(
        capsys,
        "submit",
        "--file",
        str(path),
        "--prompt-column",
        "caption",
        "--seeds-per-prompt",
        "2",
        "--json",
    )
    assert code == 1  # line 3 is bad; the others went
    result = json.loads(out)
    assert [e["line"] for e in result["errors"]] == [3] and "line 3:" in err and "prompt" in err
    assert "ignored columns (not job spec fields): id" in err
    seeds = {index_of(j): j.seed for j in client.status_store.jobs(result["batch_id"])}
    # Row n (the first after the header is row 1) is jobs (n - 1) * 2 and (n - 1) * 2 + 1
    assert seeds[0] == 5 and seeds[1] == 6 and set(seeds) == {0, 1, 4, 5}
    assert seeds[5] == seeds[4] + 1  # type: ignore[operator]
    assert result["job_ids"][:2] == [f"{result['batch_id']}-0", f"{result['batch_id']}-1"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "row 1: empty file"),
        (b"caption\nnot parquet at all\n", "row 1: not a Parquet file"),
        (None, "row 1: no 'caption' column"),
    ],
)
def test_a_bad_parquet_file_is_a_clear_error_and_exit_code(
    settings: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes | None,
    expected: str,
):
    path = tmp_path / "bad.parquet"
    if content is None:
        pq.write_table(pa.table({"text": ["a cat"]}), path)
    else:
        path.write_bytes(content)
    code, out, err = run(capsys, "submit", "--file", str(path), "--prompt-column", "caption")
    assert code == 1 and out == ""
    assert expected in err and "no job was submitted" in err and "Traceback" not in err


def test_a_prompt_column_for_jsonl_is_a_usage_error(settings: Settings, tmp_path: Path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n')
    code, _, err = run(capsys, "submit", "--file", str(path), "--prompt-column", "caption")
    assert code == 2 and "--prompt-column is for CSV and Parquet" in err
    code, _, err = run(capsys, "submit", "--file", str(path), "--seeds-per-prompt", "0")
    assert code == 2 and "--seeds-per-prompt" in err
