"""Output of the operator verbs: rich for people, JSON for machines."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from rich.console import Console
from rich.status import Status
from rich.text import Text

# Off a terminal (pipes, CI logs, tests) rich would assume 80 columns and cut ids short.
_WIDE = 200


def stdout_console() -> Console:
    return Console(highlight=False, width=None if sys.stdout.isatty() else _WIDE)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else _WIDE)


def safe(value: object, *, newlines: bool = False) -> str:
    """Text from a message, made safe for a terminal: control characters (and other characters
    that are not printable, like bidirectional overrides) shown as escapes, e.g. ``\\x1b``."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (newlines and c == "\n") else _escaped(c) for c in text)


def _escaped(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def plain(value: object, style: str = "", *, newlines: bool = False) -> Text:
    """Text from a message for rich output: never read as markup (``[/bold]`` is shown as
    written), control characters escaped."""
    return Text(safe(value, newlines=newlines), style=style)


class TaskSpinner:
    """While a task runs: a spinner on stderr when it is a terminal (nothing otherwise; the
    subclass then prints plain lines). Subclasses say what it shows in ``_text``."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.console = stderr_console()
        self.started = time.monotonic()
        self.spinner: Status | None = None

    def __enter__(self) -> Any:
        if self.console.is_terminal:
            self.spinner = self.console.status(Text(self._text()))
            self.spinner.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.spinner is not None:
            self.spinner.stop()

    def _text(self) -> str:
        """What the spinner shows (plain text, already made safe: ``elapsed`` does that)."""
        raise NotImplementedError

    def show(self) -> None:
        """Refresh the spinner, or print a plain line when there is none."""
        if self.spinner is not None:
            self.spinner.update(Text(self._text()))
        else:
            notice(self._text())

    def elapsed(self, doing: str) -> str:
        return safe(f"task {self.task_id}: {doing} ({time.monotonic() - self.started:.0f} s)")


def print_json(value: Any) -> None:
    """One JSON document on one line (JSON Lines when called repeatedly)."""
    if isinstance(value, msgspec.Struct):
        text = msgspec.json.encode(value).decode()
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    print(text, flush=True)


def notice(message: str) -> None:
    """A line for the person watching (stderr: stdout stays clean for the data)."""
    print(message, file=sys.stderr, flush=True)


def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    if seconds < 1:
        return "just now"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


def seconds_text(ms: int) -> str:
    return f"{ms / 1000:.1f} s" if ms >= 100 else f"{ms} ms"
