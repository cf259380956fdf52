"""Structured JSON logs: one object per line, with the worker id, task id, attempt and trace id on every line.

The task id and attempt come from context variables that the worker sets around each message, so
every log call made while handling a task (in the adapter too) is tagged without passing them along.
Credentials never reach a line: URLs with a password are redacted before the line is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec
from opentelemetry import trace

worker_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("worker_id", default=None)
task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)
attempt_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("attempt", default=None)

# scheme://user:secret@host -> scheme://user:***@host, wherever it appears in a message.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged as a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# What OpenTelemetry's logging instrumentation (which the Dagger SDK turns on when OTEL_* is set)
# adds to every record: the line has its own ``trace_id``.
_OTEL_ATTRS = frozenset({"otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName"})


def redact(text: str) -> str:
    return _URL_PASSWORD.sub(r"\1***@", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
            "worker_id": worker_id_var.get(),
            "task_id": task_id_var.get(),
            "attempt": attempt_var.get(),
            "trace_id": _trace_id(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in _OTEL_ATTRS and key not in line:
                line[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return msgspec.json.encode(line, enc_hook=str).decode()


def _trace_id() -> str | None:
    """The current OpenTelemetry trace (the command's, while the worker handles one)."""
    span_context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None


# The AMQP client libraries log a dropped connection or channel at ERROR (with a traceback) while
# their robust connection reconnects, and the worker carries on: for an operator that is a warning.
_RECONNECTING_LIBRARIES = ("aio_pika", "aiormq")


class LibraryReconnectErrors(logging.Filter):
    """Write the AMQP libraries' ERROR records as WARNING, without the traceback (the worker
    reports what the outage means for it: paused, reconnected, a publish retried)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and record.name.split(".")[0] in _RECONNECTING_LIBRARIES:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def configure_logging(level: str = "INFO", *, worker_id: str | None = None, stream: TextIO | None = None) -> None:
    """Send every logger's records, as JSON lines, to ``stream`` (stderr) at ``level``."""
    if worker_id is not None:
        worker_id_var.set(worker_id)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(LibraryReconnectErrors())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aio-pika/aiormq narrate every reconnect attempt at INFO with tracebacks; ours say what matters.
    for noisy in ("aio_pika", "aiormq", "gql", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


@contextlib.contextmanager
def task_context(task_id: str | None, attempt: int | None = None) -> Iterator[None]:
    """Tag every log line inside the block with ``task_id`` and ``attempt``."""
    task_token = task_id_var.set(task_id)
    attempt_token = attempt_var.set(attempt)
    try:
        yield
    finally:
        attempt_var.reset(attempt_token)
        task_id_var.reset(task_token)
