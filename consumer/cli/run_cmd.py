"""``dagger-adapter run FILE|-``: execute one command here, in-process, without RabbitMQ.

The same ``DaggerAdapter`` the worker uses (cache, retries, circuit breaker, path rules).
Step progress goes to stderr (a spinner on a terminal, plain lines otherwise); the result
goes to stdout. Exit 0: succeeded; 1: failed; 2: the file or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time

import msgspec
from rich.markup import escape

from consumer.cli.command_args import add_command_arguments, command_from
from consumer.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, config_from
from consumer.cli.console import TaskSpinner, notice, safe
from consumer.cli.submit_cmd import show_result
from consumer.config import DaggerAdapterConfig
from schemas import ExecutionCommand, ExecutionResult

_MARKS = {"started": "▶", "succeeded": "[green]✔[/]", "failed": "[red]✘[/]"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "run",
        help="execute one command here, without RabbitMQ",
        description=(
            "Execute one execution command (JSON or YAML) in this process through the Dagger engine, "
            "with the worker's cache, retries and path rules, and print its result. Exit 0 if it "
            "succeeded, 1 if it failed, 2 if the file or the arguments are wrong."
        ),
    )
    add_command_arguments(parser)
    parser.add_argument("--no-cache", action="store_true", help="neither use nor store a cached result")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    command = command_from(args)
    if args.no_cache:
        command = msgspec.structs.replace(command, parameters={**command.parameters, "cache": False})
    _quiet_logs(config)
    result = asyncio.run(execute(config, command))
    show_result(result, args.json)
    return EXIT_OK if result.success else EXIT_FAILURE


async def execute(config: DaggerAdapterConfig, command: ExecutionCommand) -> ExecutionResult:
    from consumer.adapter import DaggerAdapter  # here, not at the top: the SDK is slow to import

    adapter = DaggerAdapter(config)
    progress = StepProgress(command.task_id)
    try:
        with progress:
            await adapter.initialize()
            return await adapter.execute(command, on_progress=progress.update)
    finally:
        await adapter.close()


class StepProgress(TaskSpinner):
    """Steps as they start and end: a spinner naming the running ones on a terminal, one
    plain line per change otherwise (stderr either way: stdout is for the result)."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.running: dict[str, float] = {}

    def _text(self) -> str:
        return self.elapsed(", ".join(self.running) or "starting")

    def update(self, step: str, state: str, detail: str | None) -> None:
        if state == "started":
            self.running[step] = time.monotonic()
        else:
            self.running.pop(step, None)
        line = safe(f"step {step}: {state}" + (f": {detail}" if detail else ""))
        if self.spinner is not None:
            if state != "started":
                self.console.print(f"{_MARKS.get(state, '-')} {escape(line)}", highlight=False)
            self.show()
        else:
            notice(line)


def _quiet_logs(config: DaggerAdapterConfig) -> None:
    # Warnings (cache unreachable, engine reconnects) are worth a line; request logs are not.
    level = getattr(logging, config.log_level.upper(), logging.INFO)
    logging.basicConfig(level=max(level, logging.WARNING), format="dagger-adapter: %(levelname)s: %(message)s")
    for name in ("httpx", "httpcore", "dagger", "gql"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The adapter's own task lines repeat what the printed result says.
    logging.getLogger("consumer.adapter").setLevel(logging.ERROR)


__all__ = ["EXIT_USAGE", "StepProgress", "execute", "register", "run"]
