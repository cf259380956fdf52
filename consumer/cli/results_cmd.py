"""``dagger-adapter results``: result events as they are published, or from the results stream."""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.text import Text
from valkey.exceptions import ValkeyError

from consumer.cli.arg_types import positive_int, positive_seconds, since
from consumer.cli.broker_session import client_for, run_async
from consumer.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNKNOWN_TASK,
    EXIT_USAGE,
    CliError,
    config_from,
)
from consumer.cli.console import notice, plain, print_json, seconds_text, stdout_console
from consumer.cli.submit_cmd import show_result
from consumer.client import ResultStore
from consumer.config import redact_url, topology_for
from schemas import ExecutionResult, ExecutionType, InvalidMessage, Outcome

DEFAULT_LISTEN_SECONDS = 10.0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "results",
        help="show result events as workers publish them",
        description=(
            "Show result events published from now on; with --since or --from-start, first the results "
            "kept in the results stream from then (retention: results_stream_max_age/_max_bytes). Without --follow, listens for --for seconds (default "
            f"{DEFAULT_LISTEN_SECONDS:g}) and exits 0; with --follow, until Ctrl-C. --count N stops after N "
            "events; if --for runs out first, the exit code is 124. A line on stderr says when listening starts. "
            "`results get TASK_ID` instead looks up the result a task already has."
        ),
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-f", "--follow", action="store_true", help="keep streaming until Ctrl-C (or --count)")
    mode.add_argument(
        "--for",
        dest="listen",
        type=positive_seconds,
        default=DEFAULT_LISTEN_SECONDS,
        metavar="S",
        help=f"listen for S seconds (default {DEFAULT_LISTEN_SECONDS:g})",
    )
    parser.add_argument("-n", "--count", type=positive_int, metavar="N", help="stop after N events")
    parser.add_argument("--type", dest="execution_type", choices=[t.value for t in ExecutionType])
    parser.add_argument("--outcome", choices=[o.value for o in Outcome])
    parser.add_argument("--task-id", help="only this task's results")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--since",
        type=since,
        metavar="WHEN",
        help="start with the results kept since WHEN: 90s, 30m, 1h, 7d back, or an ISO time",
    )
    start.add_argument("--from-start", action="store_true", help="start with every result the stream keeps")
    parser.add_argument("--json", action="store_true", help="one JSON result per line")
    parser.set_defaults(handler=run)
    # `results get TASK_ID`: a sub-verb; plain `results [--follow] ...` stays the live stream.
    lookups = parser.add_subparsers(dest="results_verb", metavar="get", required=False)
    get = lookups.add_parser(
        "get",
        help="what became of a task: its recorded result",
        description=(
            "Show the final result the workers recorded for TASK_ID, read from their outcome records in "
            "Valkey (valkey_url / DAGGER_ADAPTER_VALKEY_URL: the workers' Valkey; RabbitMQ is not needed). "
            f"Exit codes: 0 the task succeeded, 1 it failed, {EXIT_UNKNOWN_TASK} no result is recorded "
            "(unknown task, expired record, or still running: the message says which), 2 usage or configuration."
        ),
    )
    get.add_argument("task_id", metavar="TASK_ID")
    get.add_argument("--json", action="store_true", help="the result as JSON")
    get.set_defaults(handler=run_get)


def run(args: argparse.Namespace) -> int:
    config = config_from(args)

    async def go() -> int:
        async with client_for(config) as client:
            events = client.results(
                execution_type=args.execution_type,
                outcome=args.outcome,
                task_id=args.task_id,
                since="first" if args.from_start else args.since,
            )
            async with events:
                until = "Ctrl-C" if args.follow else f"{args.listen:g} s"
                source = (
                    f"the results stream {events.stream}"
                    if events.stream
                    else f"{events.exchange} [{', '.join(events.routing_keys)}]"
                )
                notice(f"listening for results on {source} ({until})")
                deadline = None if args.follow else time.monotonic() + args.listen
                seen = 0
                while args.count is None or seen < args.count:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    try:
                        result = await asyncio.wait_for(anext(events), left)
                    except TimeoutError:
                        break
                    seen += 1
                    show(result, args.json)
                if args.count is not None and seen < args.count:
                    raise CliError(f"{seen} of {args.count} result(s) within {args.listen:g} s", EXIT_TIMEOUT)
                return EXIT_OK

    try:
        return run_async(go)
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C is how --follow ends


def run_get(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config.valkey_url is None:
        raise CliError(
            "results get reads the workers' outcome records: set valkey_url (DAGGER_ADAPTER_VALKEY_URL) "
            "to the Valkey the workers use",
            EXIT_USAGE,
        )

    async def lookup() -> tuple[ExecutionResult | None, str | None]:
        async with ResultStore(config.valkey_url or "", topology_for(config)) as store:
            result = await store.get(args.task_id)
            return result, (await store.running_on(args.task_id) if result is None else None)

    try:
        result, holder = asyncio.run(lookup())
    except InvalidMessage as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except (ValkeyError, OSError) as exc:
        raise CliError(f"cannot reach Valkey at {redact_url(config.valkey_url)}: {exc}") from None
    if result is None:
        state = f"it is running on worker {holder}" if holder else "unknown task, or its record expired"
        raise CliError(f"no result recorded for task {args.task_id} ({state})", EXIT_UNKNOWN_TASK)
    if args.json:
        print_json(result)
    else:
        show_result(result, as_json=False)
    return EXIT_OK if result.success else EXIT_FAILURE


def show(result: ExecutionResult, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    at = result.finished_at or result.started_at
    when = at.strftime("%H:%M:%S") if at else "--:--:--"
    kind = result.execution_type.value if result.execution_type else "?"
    mark = ("✔ succeeded", "green") if result.success else ("✘ failed", "red")
    # Everything from the message is plain text: a task id like "[/bold]" is shown, not parsed.
    line = Text.assemble(
        when,
        "  ",
        mark,
        "  ",
        plain(result.task_id, "bold"),
        f"  {kind}  attempt {result.attempts}  {seconds_text(result.duration_ms)}",
    )
    if result.cached:
        line.append("  (cached)")
    if result.worker_id:
        line.append_text(plain(f"  {result.worker_id}"))
    if not result.success:
        category = result.error_category.value if result.error_category else ""
        line.append_text(plain(f"  {category}: {result.error or ''}"))
    stdout_console().print(line, soft_wrap=True)
