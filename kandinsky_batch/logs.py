"""Log setup for every entry point (worker, CLI, API): text for a terminal, JSON lines for a pipeline.

One handler on the root logger, on stderr. A filter on it adds the fields of the job a line is
about (`log_fields`, a context variable, so threads and tasks never see each other's) and the
process's own (`bind_process`, e.g. the worker's name), so a JSON line carries `job_id`,
`batch_id`, `worker`, `mode` and `attempt` without every call spelling them out. The text
format shows none of them: it keeps the plain one-line look.

One call is one line in both formats, whatever the message holds: text escapes control
characters (a newline in an input's URI shows as `\\n`, so it cannot forge a line of its own),
and JSON escapes the few line breaks its encoder leaves as they are.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import IO, Any, Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["auto", "json", "text"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields every JSON line starts with; the record's extra fields follow, then `time` (UTC, ISO 8601).
JSON_FIELDS = "{levelname}{name}{message}"
JSON_RENAMES = {"levelname": "level", "name": "logger"}

# What ends or rewrites a line for a terminal or a line-reading pipeline: C0 and C1 controls,
# DEL, and Unicode's line and paragraph separators. Each becomes an escape of printable ASCII.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})
# Inside JSON strings, the line breaks `json.dumps(ensure_ascii=False)` writes raw.
_JSON_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}

_NONE: Mapping[str, Any] = MappingProxyType({})
_FIELDS: ContextVar[Mapping[str, Any]] = ContextVar("kandinsky_batch_log_fields", default=_NONE)
_PROCESS: dict[str, Any] = {}


def resolve_format(fmt: LogFormat, stream: IO[str] | None = None) -> Literal["json", "text"]:
    """`auto` is text when `stream` (stderr by default) is a terminal, JSON otherwise."""
    if fmt != "auto":
        return fmt
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


class ContextFilter(logging.Filter):
    """Adds the process's fields and the current job's to every record (explicit `extra` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for fields in (_PROCESS, _FIELDS.get()):
            for name, value in fields.items():
                if name not in record.__dict__:
                    setattr(record, name, value)
        return True


class DropMessage(logging.Filter):
    """Drops the records whose message holds `text`."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


# Without torchvision (no dependency of ours), transformers warns at every start that the pipelines'
# CLIP image processor falls back to the PIL one, which is what that name always meant before: that
# one record is dropped, at the logger that makes it, and all else the library says still shows.
TORCHVISION_LOGGER = "transformers.utils.import_utils"
TORCHVISION_FALLBACK = DropMessage("requires torchvision (not installed); falling back to")


def one_line(text: str) -> str:
    """`text` with every control character escaped (a newline as the two characters `\\n`)."""
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """The text format, one line per call: the message, its arguments and any traceback escaped."""

    def format(self, record: logging.LogRecord) -> str:
        return one_line(super().format(record))


class JsonLineFormatter(JsonFormatter):
    """JSON lines that stay one line for readers that also split on U+2028, U+2029 and U+0085."""

    def jsonify_log_record(self, log_data: Any) -> str:
        return super().jsonify_log_record(log_data).translate(_JSON_LINE_BREAKS)


def logging_config(fmt: LogFormat, level: str = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` for this format: also what uvicorn's `log_config=` takes."""
    resolved = resolve_format(fmt)
    formatter: dict[str, Any]
    if resolved == "json":
        formatter = {
            "()": "kandinsky_batch.logs.JsonLineFormatter",
            "fmt": JSON_FIELDS,
            "style": "{",
            "rename_fields": JSON_RENAMES,
            "timestamp": "time",
            "json_ensure_ascii": False,
        }
    else:
        formatter = {"()": "kandinsky_batch.logs.TextFormatter", "fmt": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,  # module loggers made at import time keep working
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {resolved: formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": resolved,
                "filters": ["context"],
            }
        },
        # uvicorn's loggers hand their lines to the root's handler instead of keeping their own.
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
        "root": {"level": level, "handlers": ["stderr"]},
    }


def setup_logging(fmt: LogFormat, level: str = "INFO") -> Literal["json", "text"]:
    """Configure the root logger for `fmt`; returns the format chosen (for `auto`).

    In JSON, Python's warnings become log lines too, so that every line on stderr is one object.
    """
    logging.config.dictConfig(logging_config(fmt, level))
    logging.getLogger(TORCHVISION_LOGGER).addFilter(TORCHVISION_FALLBACK)  # once, however often this runs
    resolved = resolve_format(fmt)
    logging.captureWarnings(resolved == "json")
    return resolved


def bind_process(**fields: Any) -> None:
    """Fields on every line of this process from now on (the worker's name); replaces earlier ones."""
    _PROCESS.clear()
    _PROCESS.update(fields)


@contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """Fields on every line logged inside the block, by this thread or task (nested blocks add)."""
    token = _FIELDS.set({**_FIELDS.get(), **fields})
    try:
        yield
    finally:
        _FIELDS.reset(token)
