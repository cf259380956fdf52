"""The command-document arguments ``submit`` and ``run`` share: ``FILE|-``, ``--task-id``,
``--type``, and reading them into a validated command."""

from __future__ import annotations

import argparse

from consumer.cli.common import EXIT_USAGE, CliError
from consumer.client.command_file import CommandFileError, read_command
from schemas import ExecutionCommand, ExecutionType


def add_command_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the command as JSON or YAML; - reads stdin")
    parser.add_argument("--task-id", help="set the task id (a document without one gets a fresh id)")
    parser.add_argument("--type", dest="execution_type", choices=[t.value for t in ExecutionType], help="set the type")


def command_from(args: argparse.Namespace) -> ExecutionCommand:
    """The command the arguments name; a bad file or command is ``CliError`` with exit 2."""
    try:
        return read_command(args.file, task_id=args.task_id, execution_type=args.execution_type)
    except CommandFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
