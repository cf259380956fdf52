"""What every verb shares: configuration, one-line errors, exit codes."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from consumer.config import ConfigError, DaggerAdapterConfig, load_config

EXIT_OK = 0
EXIT_FAILURE = 1  # the task (or the check) failed
EXIT_USAGE = 2  # wrong arguments, file or configuration
EXIT_BROKER = 3  # RabbitMQ could not be reached, refused us, or the connection was lost
EXIT_UNKNOWN_TASK = 4  # `results get`: no outcome is recorded for the task (unknown, expired or still running)
EXIT_TIMEOUT = 124  # like timeout(1): no answer in time


class CliError(Exception):
    """An error shown to the user as one line on stderr, with an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_FAILURE) -> int:
    print(f"dagger-adapter: error: {message}", file=sys.stderr)
    return exit_code


def die(message: str, exit_code: int = EXIT_FAILURE) -> NoReturn:
    raise CliError(message, exit_code)


def config_from(args: argparse.Namespace) -> DaggerAdapterConfig:
    try:
        return load_config(getattr(args, "config", None))
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
