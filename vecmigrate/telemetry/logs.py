"""Structured logging for workers and the gateway.

Each line carries the migration, phase, shard and task of the work it is about (from the
current work, or from ``extra``) and the trace and span ids of the current span, so a line leads
to its trace and a trace to its lines. ``json`` prints one JSON object a line (for a log
pipeline), ``text`` one readable line with the same fields at the end.

An expected domain error (bad data, a failed precondition: vecmigrate's non-retryable errors)
is one WARNING line naming the error, not a traceback: the traceback says nothing an operator
can act on, and the message does.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import io
import json
import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from opentelemetry import trace

from vecmigrate.errors import NON_RETRYABLE_NAMES, ConfigurationError
from vecmigrate.security.scrub import install as scrub_logs
from vecmigrate.telemetry.context import current_work

FORMAT_ENV = "VECMIGRATE_LOG_FORMAT"
LEVEL_ENV = "VECMIGRATE_LOG_LEVEL"
FORMATS = ("text", "json")
# Libraries that log their start-up at INFO: FAISS names every CPU build it tries and fails to
# load before the one it loads. Their warnings still show, and everything at DEBUG.
QUIET = ("faiss.loader",)

# Fields a log call may pass in ``extra`` (or the current work supplies), in print order.
FIELDS = (
    "migration_id",
    "phase",
    "shard",
    "task",
    "tenant",
    "collection",
    "version",
    "seconds",
    # A gateway request's (the path, headers and body are never logged).
    "method",
    "route",
    "status",
    "error_type",
)


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """The record's structured fields: the current work's, then what the call passed."""
    work = current_work()
    found: dict[str, Any] = work.fields() if work is not None else {}
    for name in FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            found[name] = value
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        found["trace_id"] = format(span.trace_id, "032x")
        found["span_id"] = format(span.span_id, "016x")
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _context(record)
        if not fields:
            return text
        head, sep, tail = text.partition("\n")
        suffix = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"{head} [{suffix}]{sep}{tail}"


def _domain_error(exc: BaseException | None) -> BaseException | None:
    """The vecmigrate error a failure reports, if it is one a retry cannot fix."""
    seen = 0
    while exc is not None and seen < 5:
        if type(exc).__name__ in NON_RETRYABLE_NAMES:
            return exc
        kind = getattr(exc, "type", None)
        if getattr(exc, "non_retryable", False) and kind in NON_RETRYABLE_NAMES:
            return exc
        exc, seen = exc.__cause__, seen + 1
    return None


class ExpectedErrors(logging.Filter):
    """Turn a traceback of an expected domain error into one WARNING line naming it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        found = _domain_error(record.exc_info[1])
        if found is None:
            return True
        kind = getattr(found, "type", None) or type(found).__name__
        message = getattr(found, "message", None) or str(found)
        record.msg = f"{record.getMessage()}: {kind}: {message} (not retried)"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def crash_traces() -> None:
    """On a fatal signal (a segmentation fault in a native library, an abort), write every
    thread's Python stack to stderr: the only trace such a crash leaves. Frames name files,
    functions and lines, never values. A process whose stderr is no file is left as it is."""
    with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
        faulthandler.enable(file=sys.stderr, all_threads=True)


def run_program(main: Callable[[], None]) -> NoReturn:
    """Run a program's ``main`` with :func:`crash_traces` on, then exit with its code without the
    interpreter's finalization. The program is over by then (spans exported, output flushed,
    servers and workers stopped), but the native runtimes it loaded may still hold threads:
    Temporal's client runtime can call back into Python while the interpreter tears down, which
    aborts the process (``PyGILState_Release``) after it has printed its result, with a failing
    exit code."""
    crash_traces()
    try:
        main()
        code: int = 0
    except SystemExit as done:
        if done.code is None or isinstance(done.code, int):
            code = done.code or 0
        else:
            print(done.code, file=sys.stderr)
            code = 1
    with contextlib.suppress(OSError):  # a closed pipe (`| head`) is not a failure
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def log_format_flag(p: argparse.ArgumentParser) -> None:
    """The ``--log-format`` flag of a long-running command (a worker, the gateway)."""
    p.add_argument(
        "--log-format",
        choices=list(FORMATS),
        default=None,
        help="log lines as text or JSON (default: $VECMIGRATE_LOG_FORMAT or text)",
    )


def configure_logging(fmt: str | None = None, level: str | None = None) -> None:
    """Log to stderr as ``fmt`` (``text`` or ``json``; default ``$VECMIGRATE_LOG_FORMAT`` or
    text) at ``level`` (default ``$VECMIGRATE_LOG_LEVEL`` or INFO).

    Raises:
        ConfigurationError: an unknown format or level.
    """
    fmt = (fmt or os.environ.get(FORMAT_ENV) or "text").lower()
    if fmt not in FORMATS:
        raise ConfigurationError(f"log format {fmt!r}: use text or json ({FORMAT_ENV})")
    name = (level or os.environ.get(LEVEL_ENV) or "INFO").upper()
    if not isinstance(logging.getLevelName(name), int):
        raise ConfigurationError(f"log level {name!r}: use DEBUG, INFO, WARNING or ERROR")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ExpectedErrors())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_vecmigrate", False):
            root.removeHandler(old)
    handler._vecmigrate = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(name)
    for library in QUIET:
        logging.getLogger(library).setLevel(
            logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
        )
    # Passwords and tokens that reach a message are masked on this handler too.
    scrub_logs()
