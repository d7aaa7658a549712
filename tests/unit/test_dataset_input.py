"""Datasets as batch files: CSV and Parquet rows, a chosen prompt column, and K seeds per line."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from kandinsky_batch.batch_ids import batch_id_for_file
from kandinsky_batch.keys import MAX_INDEX, Keys
from kandinsky_batch.schema import MAX_SEED, JobSpec
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.records import SHARD_JOBS, by_shard
from kandinsky_batch.store.status import StatusStore
from producer.lines import BATCH_ROWS, LineError, line_of, read_lines
from producer.submit import SubmitResult, Submitter, line_seeds, submit_lines


def write_parquet(path: Path, columns: dict[str, list[Any]], row_group_size: int) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def errors(items: list[tuple[int, Any]]) -> dict[int, str]:
    return {n: item.reason for n, item in items if isinstance(item, LineError)}


def test_parquet_rows_keep_their_numbers_across_row_groups_and_take_only_spec_columns(tmp_path: Path):
    path = write_parquet(
        tmp_path / "d.parquet",
        {
            "caption": [f"caption {i}" for i in range(7)],
            "seed": [10, None, 12, 13, 14, 15, 16],
            "negative_prompt": ["blurry", None, "", None, None, None, None],
            "url": ["https://example.com/x"] * 7,
            "score": [0.5] * 7,
        },
        row_group_size=3,
    )
    assert pq.ParquetFile(path).num_row_groups == 3
    notes: list[str] = []
    rows = list(read_lines(path, "caption", notes))
    assert [n for n, _ in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[0][1] == {"prompt": "caption 0", "seed": 10, "negative_prompt": "blurry"}
    assert rows[1][1] == {"prompt": "caption 1"}  # nulls and empty strings are left out
    assert rows[6][1] == {"prompt": "caption 6", "seed": 16}
    assert notes == ["ignored columns (not job spec fields): url, score"]


def test_bad_parquet_rows_fail_by_row_number(tmp_path: Path):
    path = write_parquet(
        tmp_path / "bad.parquet",
        {
            "caption": ["fine", None, "fine too", "half"],
            "height": [512, 512, 100, 512],
            "seed": ["1", "2", "3", "x"],
        },
        row_group_size=2,
    )
    submitter = Submitter(
        Settings(), StatusStore(redis.Redis(), Keys("unused"), 60), "b"
    )  # strict: nothing sent
    result = submit_lines(submitter, read_lines(path, "caption"), {}, strict=True)
    reasons = {e.line: e.reason for e in result.errors}
    assert sorted(reasons) == [2, 3, 4]
    assert "prompt" in reasons[2]
    assert reasons[3].startswith("height:") and "multiple of 64" in reasons[3]
    assert reasons[4].startswith("seed:")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"caption,seed\nnot parquet,1\n", "not a Parquet file"),
        (b"PAR1" + b"\0" * 64, "not a Parquet file"),
    ],
)
def test_a_file_that_is_not_parquet_is_one_error_on_line_1(tmp_path: Path, content: bytes, expected: str):
    path = tmp_path / "x.parquet"
    path.write_bytes(content)
    [(line, err)] = list(read_lines(path, "caption"))
    assert line == 1 and isinstance(err, LineError) and expected in err.reason


def test_a_missing_prompt_column_names_the_columns_there_are(tmp_path: Path):
    path = write_parquet(tmp_path / "x.parquet", {"text": ["a"], "seed": [1]}, row_group_size=1)
    [(line, err)] = list(read_lines(path, "caption"))
    assert line == 1 and isinstance(err, LineError)
    assert "'caption'" in err.reason and "'text'" in err.reason


def test_csv_rows_are_numbered_after_the_header_and_know_their_lines(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_bytes(
        b"id,caption,seed,prompt,height\n"
        b"1,a red fox,4,IGNORED,\n"
        b"\n"
        b'2,"a quoted\nprompt",5,,64\n'
        b"3,caf\xe9,6,,\n"
        b"4,,7,,\n"
    )
    notes: list[str] = []
    rows = list(read_lines(path, "caption", notes))
    assert notes == ["ignored columns (not job spec fields): id, prompt"]
    # Row n is job n - 1, as a Parquet file's: the header and the blank line are no rows
    assert rows[0] == (1, {"prompt": "a red fox", "seed": "4"})
    assert rows[1] == (2, {"prompt": "a quoted\nprompt", "seed": "5", "height": "64"})
    assert errors(rows) == {3: "not UTF-8"}
    assert rows[3] == (4, {"seed": "7"})  # no prompt: validation names it (see below)
    assert [line_of(n) for n, _ in rows] == [2, 5, 6, 7]  # the line each row ends on
    assert [item.line for _, item in rows if isinstance(item, LineError)] == [6]


def test_csv_row_errors_name_the_file_line_and_its_first_row_is_job_0(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text('caption,height\n"a fox\non two lines",\n\n,\nan owl,65\na cat,\n')
    submitter = Recording()
    submit_lines(submitter, read_lines(path, "caption"), {}, seeds_per_prompt=4)
    assert [(i, s.prompt) for i, s in submitter.sent] == [(i, "a fox\non two lines") for i in range(4)] + [
        (i, "a cat") for i in range(12, 16)
    ]
    reasons = {e.line: e.reason for e in submitter.result.errors}  # the header is line 1
    assert sorted(reasons) == [5, 6] and "prompt" in reasons[5] and reasons[6].startswith("height:")


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "empty file"), (b"text,seed\na,1\n", "no 'prompt' column"), (b"pro\xffmpt\nx\n", "not UTF-8")],
)
def test_a_csv_file_without_its_prompt_column_is_one_error_on_line_1(
    tmp_path: Path, content: bytes, expected: str
):
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    [(line, err)] = list(read_lines(path))
    assert line == 1 and isinstance(err, LineError) and expected in err.reason


def test_a_csv_syntax_error_stops_reading_with_its_line(tmp_path: Path):
    path = tmp_path / "x.csv"
    path.write_text("prompt\nok\n" + "x" * 200_000 + "\nnever read\n")  # over the csv module's field limit
    rows = list(read_lines(path))
    assert rows[0] == (1, {"prompt": "ok"})
    [(_, err)] = rows[1:]
    assert isinstance(err, LineError) and err.line == 3 and "malformed CSV" in err.reason


def test_a_prompt_column_is_refused_for_jsonl(tmp_path: Path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="CSV and Parquet"):
        list(read_lines(path, "caption"))


class Recording(Submitter):
    """A Submitter that keeps what it would send."""

    def __init__(self, batch_id: str = "bat") -> None:
        super().__init__(Settings(), StatusStore(redis.Redis(), Keys("unused"), 60), batch_id)
        self.sent: list[tuple[int, JobSpec]] = []

    def add(self, index: int, spec: JobSpec) -> None:
        self.sent.append((index, spec))

    def close(self) -> SubmitResult:
        return self.result


def test_seeds_per_prompt_gives_k_jobs_per_line_with_consecutive_seeds():
    lines = [(1, {"prompt": "a", "seed": 100}), (2, {"prompt": "b"}), (3, {"prompt": "c", "num_images": 2})]
    submitter = Recording()
    submit_lines(submitter, lines, {}, seeds_per_prompt=3)
    got = [(i, s.prompt, s.seed) for i, s in submitter.sent]
    assert [i for i, _, _ in got] == list(range(9))  # index = (line - 1) * K + k
    assert [s for _, _, s in got[:3]] == [100, 101, 102]
    derived = got[3][2]
    assert derived is not None and [s for _, _, s in got[3:6]] == [derived, derived + 1, derived + 2]
    seeds = [s for _, _, s in got[6:]]
    assert seeds[0] is not None and seeds == [seeds[0], seeds[0] + 2, seeds[0] + 4]  # images never share one
    # A resubmit (or a resumed one) derives the same seeds; another batch derives others
    again = Recording()
    submit_lines(again, lines, {}, seeds_per_prompt=3)
    assert [(i, s.seed) for i, s in again.sent] == [(i, s) for i, _, s in got]
    other = Recording("other")
    submit_lines(other, lines, {}, seeds_per_prompt=3)
    assert other.sent[3][1].seed != derived


def test_line_seeds_stay_within_the_seed_range():
    spec = JobSpec(prompt="p", num_images=8)
    for number in range(1, 200):
        seeds = line_seeds("b", number, spec, 1000)
        assert len(seeds) == 1000 and seeds[0] >= 0 and seeds[-1] + 7 <= MAX_SEED
    submitter = Recording()
    submit_lines(
        submitter,
        [(1, {"prompt": "p", "seed": MAX_SEED - 1}), (2, {"prompt": "q", "seed": MAX_SEED - 2})],
        {},
        seeds_per_prompt=3,
    )
    assert [e.line for e in submitter.result.errors] == [1]
    assert "seed" in submitter.result.errors[0].reason
    assert [s.seed for _, s in submitter.sent] == [MAX_SEED - 2, MAX_SEED - 1, MAX_SEED]


def test_seeds_per_prompt_keeps_indices_under_the_last_and_runs_within_a_shard():
    k = 4
    last_line = MAX_INDEX // k + 1  # its jobs end exactly at MAX_INDEX
    submitter = Recording()
    submit_lines(
        submitter,
        [(last_line, {"prompt": "last"}), (last_line + 1, {"prompt": "past"})],
        {},
        seeds_per_prompt=k,
    )
    assert [i for i, _ in submitter.sent] == list(range(MAX_INDEX - k + 1, MAX_INDEX + 1))
    assert [e.line for e in submitter.result.errors] == [last_line + 1]
    # A line's jobs that straddle a record shard go in one run per shard
    line = SHARD_JOBS // 3 + 1  # its jobs are SHARD_JOBS - 1 .. SHARD_JOBS + 1
    straddling = Recording()
    submit_lines(straddling, [(line, {"prompt": "edge"})], {}, seeds_per_prompt=3)
    runs = list(by_shard(straddling.sent))
    assert [[i for i, _ in run] for run in runs] == [[SHARD_JOBS - 1], [SHARD_JOBS, SHARD_JOBS + 1]]


def test_seeds_per_prompt_out_of_range_is_refused():
    with pytest.raises(ValueError, match="seeds_per_prompt"):
        submit_lines(Recording(), [], {}, seeds_per_prompt=0)


def test_the_batch_of_a_file_changes_with_its_options_and_not_without(tmp_path: Path):
    path = tmp_path / "d.csv"
    path.write_text("caption\na\n")
    plain = batch_id_for_file(path, {})
    assert batch_id_for_file(path, {}, "prompt", 1) == plain  # files keep the batch id they always had
    ids = {plain, batch_id_for_file(path, {}, "caption"), batch_id_for_file(path, {}, seeds_per_prompt=3)}
    ids.add(batch_id_for_file(path, {}, "caption", 3))
    assert len(ids) == 4


def test_a_big_parquet_file_is_read_in_bounded_memory(tmp_path: Path):
    rows = 200_000
    path = tmp_path / "big.parquet"
    captions = pa.array([f"caption {i:06d} of a dataset with some words in it" for i in range(rows)])
    pq.write_table(
        pa.table({"caption": captions, "seed": pa.array(range(rows))}), path, row_group_size=20_000
    )
    assert pq.ParquetFile(path).num_row_groups == 10
    # Measured: the rows as Python objects all at once take ~80 MB (the file is ~2.6 MB); the whole
    # table through Arrow ~12 MB. Read as it comes: ~0.5 MB of Python objects, ~1.7 MB of Arrow buffers.
    table_bytes = pq.read_table(path).nbytes
    default = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(default)  # its peak counts this read only
    pa.set_memory_pool(pool)
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_lines(path, "caption"))
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        pa.set_memory_pool(default)
    assert count == rows
    assert python_peak < path.stat().st_size / 2, python_peak  # about BATCH_ROWS rows of dicts
    assert 0 < pool.max_memory() < table_bytes / 3, (pool.max_memory(), table_bytes)  # about one row group
    assert BATCH_ROWS < 20_000


def test_parquet_is_read_one_row_group_at_a_time_and_only_the_columns_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    path = write_parquet(
        tmp_path / "d.parquet", {"caption": list("abcdef"), "blob": ["x" * 100] * 6}, row_group_size=2
    )
    calls: list[tuple[list[int], list[str]]] = []
    original = pq.ParquetFile.iter_batches

    def spy(self: pq.ParquetFile, *args: Any, **kwargs: Any) -> Any:
        calls.append((kwargs["row_groups"], kwargs["columns"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    rows = read_lines(path, "caption")
    assert next(rows) == (1, {"prompt": "a"})
    assert calls == [([0], ["caption"])]  # the later groups are not touched yet
    assert [n for n, _ in rows] == [2, 3, 4, 5, 6]
    assert calls == [([0], ["caption"]), ([1], ["caption"]), ([2], ["caption"])]
