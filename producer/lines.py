"""Reading batch files: the lines of a JSONL file or upload, the rows of a CSV or Parquet file.

Each reader yields `(number, parsed item or LineError)`, streamed so a dataset is never read
whole; the bulk submitter (producer/submit.py) validates the items and reports the errors by
number. Line n is job n - 1 (times K with seeds per prompt).

A table (CSV, Parquet) usually carries more columns than a job needs (ids, URLs, scores), so
only columns named like job spec fields are taken (the prompt from `prompt_column`); the others
are ignored and named once in `notes`, never sent. Its rows are numbered from 1, as a JSONL
file's lines are: a Parquet file's rows in order, a CSV file's from the first after its header,
blank lines left out (as pandas numbers them); a CSV row's errors name the file line it ends on,
where a person finds it. A file that cannot be read at all is one error on line 1, as a CSV
file without its prompt column has always been.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kandinsky_batch.schema import JobSpec

SPEC_FIELDS = frozenset(JobSpec.model_fields)
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
TABLE_SUFFIXES = PARQUET_SUFFIXES | {".csv"}
BATCH_ROWS = 1024  # Parquet rows turned into Python objects at a time (one row group is read at a time)


@dataclass(frozen=True)
class LineError:
    """A line (or row) that is no job, and why: reported by number, while the other lines go."""

    line: int
    reason: str


Row = tuple[int, dict[str, Any] | LineError]


class RowNumber(int):
    """A row's number, which its jobs' indices come from, that also knows the file line it ends on.

    A CSV file's rows are numbered from 1 after its header (its first row is job 0, as a Parquet
    file's), but a person finds a row by its line, so that is what a message about it names.
    """

    line: int

    def __new__(cls, number: int, line: int) -> RowNumber:
        row = super().__new__(cls, number)
        row.line = line
        return row


def line_of(number: int) -> int:
    """The line a message names for the item read as `number`: its own, unless it knows better."""
    return number.line if isinstance(number, RowNumber) else number


def read_lines(
    path: Path, prompt_column: str = "prompt", notes: list[str] | None = None
) -> Iterator[tuple[int, Any]]:
    """Yield `(line number, parsed object or LineError)` for a JSONL, CSV or Parquet file.

    `prompt_column` names the prompt's column of a CSV or Parquet file; what the reader has to
    say about the whole file (ignored columns) is appended to `notes`.
    """
    if is_table(path):
        yield from read_table(path, prompt_column, notes)
        return
    if prompt_column != "prompt":
        raise ValueError("a prompt column is for CSV and Parquet files; a JSONL line names its 'prompt'")
    with path.open("rb") as fh:
        yield from parse_jsonl(fh)


def parse_jsonl(lines: Iterable[bytes]) -> Iterator[tuple[int, Any]]:
    """`(line number, parsed object or LineError)` for raw JSONL lines; blank lines are skipped."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, LineError(number, f"not UTF-8 ({exc.reason} at byte {exc.start})")
            continue
        try:
            yield number, json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            if isinstance(exc, RecursionError):
                yield number, LineError(number, "malformed JSON: nested too deep")
                continue
            reason = exc.msg.removesuffix(" at")  # "Invalid control character at" ends so
            yield number, LineError(number, f"malformed JSON at column {exc.colno}: {reason}")


def split_lines(chunks: Iterable[bytes], max_line: int) -> Iterator[bytes]:
    """The lines of a byte stream that arrives in chunks (an upload), each at most `max_line` bytes.

    A longer line is cut short (its first `max_line` bytes), so it fails as malformed JSON
    instead of growing memory without bound.
    """
    rest, skipping = b"", False
    for chunk in chunks:
        *lines, tail = (rest + chunk).split(b"\n")
        for line in lines:
            if not skipping:
                yield line
            skipping = False
        rest = b"" if skipping else tail
        if len(rest) > max_line:
            yield rest[:max_line]
            rest, skipping = b"", True
    if rest and not skipping:
        yield rest


def is_table(path: Path) -> bool:
    return path.suffix.lower() in TABLE_SUFFIXES


def read_table(path: Path, prompt_column: str = "prompt", notes: list[str] | None = None) -> Iterator[Row]:
    """`(row number, spec fields or LineError)` for each row of a CSV or Parquet file."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return read_parquet(path, prompt_column, notes)
    return read_csv(path, prompt_column, notes)


def pick_columns(names: Sequence[str], prompt_column: str, notes: list[str] | None) -> dict[str, str] | str:
    """{column: spec field} for the columns taken, or why the file cannot be used.

    The prompt comes from `prompt_column` only: a column named `prompt` beside another prompt
    column is ignored, so one run never mixes two sources of prompts.
    """
    if prompt_column not in names:
        shown = ", ".join(repr(n) for n in names[:20]) or "none"
        return f"no {prompt_column!r} column to take the prompts from (the file's columns: {shown})"
    taken = {prompt_column: "prompt"}
    ignored: list[str] = []
    for name in names:
        if name == prompt_column or not name:
            continue
        if name in SPEC_FIELDS and name != "prompt":
            taken[name] = name
        elif name not in ignored:
            ignored.append(name)
    if ignored and notes is not None:
        notes.append(f"ignored columns (not job spec fields): {', '.join(ignored)}")
    return taken


def read_csv(path: Path, prompt_column: str = "prompt", notes: list[str] | None = None) -> Iterator[Row]:
    """Rows of a CSV file with a header line, read as they come; empty cells are left out.

    Each row's number (`RowNumber`) counts the rows after the header, and knows its line.

    Bytes that are not UTF-8 fail their row only. A CSV syntax error (an unclosed quote, a
    field over the csv module's limit) stops the reading there, since what follows cannot be
    split into rows with any confidence. The reader is strict: leniently read, a quote left open
    would take the rest of the file as one prompt and the submit would look fine.
    """
    with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, strict=True)
        try:
            header = next(reader, None)
        except csv.Error as exc:
            yield 1, LineError(1, f"malformed CSV header: {exc}")
            return
        if header is None:
            yield 1, LineError(1, "empty file: a CSV file needs a header line naming its columns")
            return
        if not all(map(_is_utf8, header)):
            yield 1, LineError(1, "the CSV header is not UTF-8")
            return
        picked = pick_columns(header, prompt_column, notes)
        if isinstance(picked, str):
            yield 1, LineError(1, picked)
            return
        # The last column of a repeated name wins, as with csv.DictReader.
        positions = {field: i for i, name in enumerate(header) if (field := picked.get(name))}
        rows = 0
        while True:
            start = reader.line_num + 1  # the line the next row starts on
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                line, why = reader.line_num, f"malformed CSV: {exc}"
                if str(exc) == "unexpected end of data":  # a quote still open at the end of the file
                    line, why = start, f"unterminated quoted field starting at line {start}"
                elif line > start:  # inside a quoted field since `start`: most likely a quote left open
                    line, why = (
                        start,
                        f"malformed CSV at line {line} in a quoted field open since line {start}: {exc}",
                    )
                yield RowNumber(rows + 1, line), LineError(line, f"{why} (reading stopped here)")
                return
            line = reader.line_num
            if not row:
                continue  # a blank line: no row
            rows += 1
            number = RowNumber(rows, line)
            if not all(map(_is_utf8, row)):
                yield number, LineError(line, "not UTF-8")
                continue
            yield number, {field: row[i] for field, i in positions.items() if i < len(row) and row[i] != ""}


def _is_utf8(text: str) -> bool:
    """False where the file's bytes were not UTF-8 (read with surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_parquet(path: Path, prompt_column: str = "prompt", notes: list[str] | None = None) -> Iterator[Row]:
    """Rows of a Parquet file, one row group at a time and only the columns taken; nulls are left out.

    Memory is about one row group's chosen columns plus `BATCH_ROWS` rows as Python objects,
    whatever the file's size (a file written as one huge row group is read as one).
    """
    import pyarrow as pa  # here, so a JSONL or CSV submit never loads pyarrow
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        yield 1, LineError(1, "empty file: not a Parquet file")
        return
    try:
        table = pq.ParquetFile(path, pre_buffer=False)
        names = list(table.schema_arrow.names)
    except (pa.ArrowException, OSError) as exc:
        yield 1, LineError(1, f"not a Parquet file ({exc})")
        return
    picked = pick_columns(names, prompt_column, notes)
    if isinstance(picked, str):
        yield 1, LineError(1, picked)
        return
    row = 0
    for group in range(table.num_row_groups):
        batches = table.iter_batches(
            batch_size=BATCH_ROWS, row_groups=[group], columns=list(picked), use_threads=False
        )
        try:
            for batch in batches:
                for values in batch.to_pylist():
                    row += 1
                    yield row, {picked[k]: v for k, v in values.items() if v is not None and v != ""}
        except (pa.ArrowException, OSError) as exc:
            yield row + 1, LineError(row + 1, f"unreadable row group {group}: {exc} (reading stopped here)")
            return
