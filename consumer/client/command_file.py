"""Reading an execution command from a JSON or YAML document (a file, or ``-`` for stdin)."""

from __future__ import annotations

import sys
import uuid
from typing import Any, TextIO

import msgspec
import yaml

from schemas import ExecutionCommand, InvalidMessage, decode_command


class CommandFileError(ValueError):
    """The document cannot be read or is not a valid command; the message says which and why."""


def read_command(
    source: str,
    *,
    task_id: str | None = None,
    execution_type: str | None = None,
    stdin: TextIO | None = None,
) -> ExecutionCommand:
    """Load and fully validate a command. ``task_id`` and ``execution_type`` override the
    document's; a document without a task id gets a fresh one (uuid4 hex)."""
    name = "stdin" if source == "-" else source
    return command_from_text(_read(source, stdin or sys.stdin), name, task_id=task_id, execution_type=execution_type)


def command_from_text(
    text: str, name: str, *, task_id: str | None = None, execution_type: str | None = None
) -> ExecutionCommand:
    """``read_command`` for a document already in hand (``name`` says where it came from)."""
    data = parse_document(text, name)
    if task_id is not None:
        data["task_id"] = task_id
    if execution_type is not None:
        data["execution_type"] = execution_type
    data.setdefault("task_id", uuid.uuid4().hex)
    try:
        command, _ = decode_command(msgspec.json.encode(data))
    except InvalidMessage as exc:
        raise CommandFileError(f"{name}: {exc}") from None
    return command


def parse_document(text: str, name: str) -> dict[str, Any]:
    """A JSON or YAML mapping (YAML is a superset of JSON; JSON is tried first for its errors)."""
    data: Any
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            raise CommandFileError(f"{name} is neither valid JSON nor valid YAML{at}") from None
    if data is None:
        raise CommandFileError(f"{name} is empty")
    if not isinstance(data, dict):
        raise CommandFileError(f"{name} must hold a mapping (a command object), not {type(data).__name__}")
    return data


def _read(source: str, stdin: TextIO) -> str:
    if source == "-":
        return stdin.read()
    try:
        with open(source, encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise CommandFileError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise CommandFileError(f"{source}: is a directory") from None
    except PermissionError:
        raise CommandFileError(f"{source}: permission denied") from None
    except UnicodeDecodeError:
        raise CommandFileError(f"{source}: not UTF-8 text") from None
