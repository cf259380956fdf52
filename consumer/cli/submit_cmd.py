"""``dagger-adapter submit FILE|-``: publish one command; with ``--wait``, wait for its result."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import msgspec
from rich.text import Text

from consumer.cli.arg_types import positive_seconds
from consumer.cli.broker_session import client_for, run_async
from consumer.cli.command_args import add_command_arguments, command_from
from consumer.cli.common import EXIT_BROKER, EXIT_FAILURE, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, CliError, config_from
from consumer.cli.console import TaskSpinner, plain, print_json, seconds_text, stdout_console
from consumer.client import ConnectionLost, ExecutionClient
from consumer.telemetry import tracing
from schemas import ExecutionCommand, ExecutionResult, StatusEvent

DEFAULT_WAIT_SECONDS = 600.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "submit",
        help="publish an execution command (JSON or YAML)",
        description=(
            "Publish one execution command to the tasks exchange (publisher confirms; an unroutable "
            "command is an error). Without --wait, prints the task id. With --wait, waits for the result "
            "and exits 0 if it succeeded, 1 if it failed, 124 if none came within --timeout; "
            "2 means the file or the arguments are wrong, 3 that RabbitMQ could not be reached (or was lost)."
        ),
    )
    add_command_arguments(parser)
    parser.add_argument("--wait", action="store_true", help="wait for the result and print it")
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_WAIT_SECONDS,
        metavar="S",
        help=f"with --wait: give up after S seconds (exit 124; the task may still run). Default {DEFAULT_WAIT_SECONDS:g}",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    command = command_from(args)
    try:
        tracing.configure_tracing()
    except tracing.TracingConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None

    async def go() -> int:
        async with client_for(config) as client:
            if not args.wait:
                await client.submit(command)
                if args.json:
                    print_json(
                        {
                            "task_id": command.task_id,
                            "execution_type": command.execution_type.value,
                            "trace_id": tracing.current_trace_id(),
                        }
                    )
                else:
                    stdout_console().print(
                        f"submitted task [bold]{command.task_id}[/] ({command.execution_type.value})"
                    )
                return EXIT_OK
            return await submit_and_show(client, command, args.timeout, args.json)

    # One trace from here (or from the caller's TRACEPARENT) through the worker to the engine.
    try:
        with tracing.cli_span("submit"):
            return run_async(go)
    finally:
        tracing.shutdown_tracing()


async def submit_and_show(client: ExecutionClient, command: ExecutionCommand, timeout: float, as_json: bool) -> int:
    progress = Progress(command.task_id)
    async with client.status(task_id=command.task_id, heartbeats=False) as events:
        watcher = asyncio.create_task(progress.follow(events))
        try:
            with progress:
                result = await client.submit_and_wait(command, timeout)
        except TimeoutError:
            raise CliError(
                f"no result for task {command.task_id} within {timeout:g} s (it may still run; "
                f"watch it with `dagger-adapter results --follow --task-id {command.task_id}`)",
                EXIT_TIMEOUT,
            ) from None
        except ConnectionLost:
            raise CliError(
                f"lost the connection to RabbitMQ while waiting for the result of task {command.task_id} "
                "(it may still run)",
                EXIT_BROKER,
            ) from None
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    show_result(result, as_json)
    return EXIT_OK if result.success else EXIT_FAILURE


class Progress(TaskSpinner):
    """A spinner with the task's latest state on a terminal; plain state lines otherwise."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.state = "submitted"

    def _text(self) -> str:
        return self.elapsed(self.state)

    async def follow(self, events: Any) -> None:
        async for event in events:
            if not isinstance(event, StatusEvent):
                continue
            self.state = event.state.value + (f" (attempt {event.attempt})" if event.attempt > 1 else "")
            if event.detail:
                self.state += f": {event.detail}"
            self.show()


def show_result(result: ExecutionResult, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    console = stdout_console()
    where = f"attempt {result.attempts}" + (f", worker {result.worker_id}" if result.worker_id else "")
    if result.cached:
        where += ", from cache"
    if result.trace_id:
        where += f", trace {result.trace_id}"
    if result.success:
        console.print(
            Text.assemble(
                ("✔", "green"),
                " task ",
                plain(result.task_id, "bold"),
                f" succeeded in {seconds_text(result.duration_ms)} (",
                plain(where),
                ")",
            )
        )
    else:
        category = result.error_category.value if result.error_category else "failed"
        console.print(
            Text.assemble(
                ("✘", "red"),
                " task ",
                plain(result.task_id, "bold"),
                f" failed ({category}, ",
                plain(where),
                "): ",
                plain(result.error or "", newlines=True),
            )
        )
    if result.result is not None:
        console.print_json(msgspec.json.encode(result.result, enc_hook=str).decode(), ensure_ascii=True)
