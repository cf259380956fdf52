"""``dagger-adapter dlq list|show|replay|purge``: work the dead-letter queue."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rich.table import Table
from rich.text import Text

from consumer.cli.arg_types import positive_int
from consumer.cli.broker_session import run_async
from consumer.cli.common import EXIT_OK, EXIT_USAGE, CliError, config_from
from consumer.cli.connect import connect
from consumer.cli.console import plain, print_json, safe, stdout_console
from consumer.client import DeadLetter, DeadLetterQueue, Replayed, ReplayIncomplete, Selector
from consumer.client.publishing import require_queue
from consumer.config import DaggerAdapterConfig, topology_for
from schemas import ErrorCategory

DEFAULT_LIMIT = 50
ERROR_WIDTH = 80  # characters of the error shown in the list; `dlq show` has all of it


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "dlq",
        help="list, show, replay or purge dead letters",
        description=(
            "Work the dead-letter queue. Listing and showing consume nothing: messages are read and handed "
            "back in place, so two listings agree. Ids are message ids (or sha-... content ids)."
        ),
    )
    verbs = parser.add_subparsers(dest="dlq_verb", metavar="ACTION", required=True)

    ls = verbs.add_parser("list", help="the oldest dead letters: id, task id, category, error, attempts, when")
    ls.add_argument("--limit", type=positive_int, default=DEFAULT_LIMIT, metavar="N", help=f"default {DEFAULT_LIMIT}")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=run_list)

    show = verbs.add_parser("show", help="one dead letter in full: properties, headers and body")
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=run_show)

    replay = verbs.add_parser(
        "replay",
        help="send dead letters back to the tasks exchange, each once, attempts reset",
        description=(
            "Publish each selected dead letter to the tasks exchange (confirmed) and only then remove it "
            "from the dead-letter queue. Attempt and error headers are dropped and a new x-replay-id is set, "
            "so the worker runs it again even if it stored a failure for the task."
        ),
    )
    _add_selection(replay, "replay")
    replay.add_argument(
        "--category",
        choices=[*(c.value for c in ErrorCategory), "unknown"],  # "unknown": headers without a category
        help="every dead letter of this error category",
    )
    replay.add_argument("--task-id", help="every dead letter of this task")
    replay.add_argument("--dry-run", action="store_true", help="show what would move; move nothing")
    replay.add_argument("--json", action="store_true", help="machine-readable output")
    replay.set_defaults(handler=run_replay)

    purge = verbs.add_parser("purge", help="delete dead letters for good")
    _add_selection(purge, "purge")
    purge.add_argument("-y", "--yes", action="store_true", help="do it without asking")
    purge.add_argument("--json", action="store_true", help="machine-readable output")
    purge.set_defaults(handler=run_purge)


def _add_selection(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("ids", nargs="*", metavar="ID", help=f"the dead letters to {verb}")
    parser.add_argument("--all", action="store_true", help=f"{verb} every dead letter")


def _selector(args: argparse.Namespace) -> Selector:
    try:
        return Selector(
            ids=tuple(args.ids),
            everything=args.all,
            category=getattr(args, "category", None),
            task_id=getattr(args, "task_id", None),
        )
    except ValueError:
        choices = "IDs, --all, --category or --task-id" if hasattr(args, "category") else "IDs or --all"
        raise CliError(f"say which dead letters: give exactly one of {choices}", EXIT_USAGE) from None


def _run(args: argparse.Namespace, action: Any) -> int:
    config = config_from(args)

    async def go() -> int:
        async with connect(config.amqp_url) as connection:
            return int(await action(DeadLetterQueue(connection, topology_for(config)), config))

    return run_async(go)


# --- list ---
def run_list(args: argparse.Namespace) -> int:
    async def action(dlq: DeadLetterQueue, config: DaggerAdapterConfig) -> int:
        total = await require_queue(dlq.connection, dlq.topology.dead_queue)
        letters = await dlq.browse(limit=args.limit)
        if args.json:
            print_json([letter.summary() for letter in letters])
            return EXIT_OK
        console = stdout_console()
        if not letters:
            console.print(f"the dead-letter queue {dlq.topology.dead_queue} is empty")
            return EXIT_OK
        table = Table(title=f"dead letters in {dlq.topology.dead_queue}")
        for column in ("id", "task id", "category", "error", "attempts", "when"):
            table.add_column(column, no_wrap=column in ("id", "task id"))
        for letter in letters:
            # Ids, categories and errors come from messages: plain text, control characters escaped.
            error = safe(letter.reason.error.replace("\n", " "))
            table.add_row(
                plain(letter.id),
                plain(letter.task_id or "-"),
                _category(letter.category),
                plain(error if len(error) <= ERROR_WIDTH else error[: ERROR_WIDTH - 1] + "…"),
                str(letter.reason.attempts),
                letter.when.strftime("%Y-%m-%d %H:%M:%S") if letter.when else "-",
            )
        if total > len(letters):
            table.caption = f"the first {len(letters)} of {total}; more with --limit"
        console.print(table)
        return EXIT_OK

    return _run(args, action)


def _category(category: str) -> Text:
    colour = {"transient": "yellow", "timeout": "yellow", "invalid": "magenta", "permanent": "red"}.get(category)
    return plain(category, colour or "")


# --- show ---
def run_show(args: argparse.Namespace) -> int:
    async def action(dlq: DeadLetterQueue, config: DaggerAdapterConfig) -> int:
        letters = await dlq.show(args.id)
        if args.json:
            print_json(letters[0].to_json() if len(letters) == 1 else [letter.to_json() for letter in letters])
            return EXIT_OK
        console = stdout_console()
        for letter in letters:
            info = letter.to_json()
            table = Table(show_header=False, box=None, title=plain(f"dead letter {letter.id}"), title_justify="left")
            table.add_column(style="bold")
            table.add_column()
            for key in ("task_id", "execution_type", "category", "error", "attempts", "dead_lettered_at", "worker_id"):
                value = info[key]
                table.add_row(key.replace("_", " "), plain("-" if value is None else value, newlines=key == "error"))
            table.add_row("routing key", plain(letter.routing_key))
            console.print(table)
            console.print("[bold]properties[/]")
            # ensure_ascii: control and bidi characters of the message as \u escapes, never raw.
            console.print_json(data={k: v for k, v in info["properties"].items() if v is not None}, ensure_ascii=True)
            console.print("[bold]headers[/]")
            console.print_json(data=info["headers"], ensure_ascii=True)
            console.print("[bold]body[/]")
            if isinstance(info["body"], str):
                console.print(plain(info["body"], newlines=True))
            else:
                console.print_json(data=info["body"], ensure_ascii=True)
        return EXIT_OK

    return _run(args, action)


# --- replay ---
def run_replay(args: argparse.Namespace) -> int:
    selector = _selector(args)

    async def action(dlq: DeadLetterQueue, config: DaggerAdapterConfig) -> int:
        try:
            moved = await dlq.replay(selector, dry_run=args.dry_run)
        except ReplayIncomplete as exc:
            _report_replay(exc.moved, dlq, args)
            raise
        _report_replay(moved, dlq, args)
        return EXIT_OK

    return _run(args, action)


def _report_replay(moved: list[Replayed], dlq: DeadLetterQueue, args: argparse.Namespace) -> None:
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "replayed": [
                    {
                        "id": m.letter.id,
                        "task_id": m.letter.task_id,
                        "routing_key": m.routing_key,
                        "replay_id": m.replay_id,
                    }
                    for m in moved
                ],
            }
        )
        return
    console = stdout_console()
    if moved:
        table = Table()
        for column in ("id", "task id", "routing key", "replay id"):
            table.add_column(column, no_wrap=True)
        for m in moved:
            table.add_row(
                *(plain(v) for v in (m.letter.id, m.letter.task_id or "-", m.routing_key, m.replay_id or "-"))
            )
        console.print(table)
    verb = "would replay" if args.dry_run else "replayed"
    console.print(f"{verb} {len(moved)} dead letter(s) to {dlq.topology.tasks_exchange}")


# --- purge ---
def run_purge(args: argparse.Namespace) -> int:
    selector = _selector(args)
    if not args.yes and not _confirmed(selector):
        raise CliError("nothing purged: confirm with --yes", EXIT_USAGE)

    async def action(dlq: DeadLetterQueue, config: DaggerAdapterConfig) -> int:
        if selector.everything:
            count = await dlq.purge_all()
            ids: list[str] | None = None
        else:
            purged: list[DeadLetter] = await dlq.purge(selector)
            count, ids = len(purged), [letter.id for letter in purged]
        if args.json:
            print_json({"purged": count, "ids": ids})
        else:
            stdout_console().print(f"purged {count} dead letter(s) from {dlq.topology.dead_queue}")
        return EXIT_OK

    return _run(args, action)


def _confirmed(selector: Selector) -> bool:
    """Ask on a terminal, never off one. The question goes to stderr (stdout is for the
    result, e.g. --json); Ctrl-D is a no."""
    if not sys.stdin.isatty():
        return False
    what = "EVERY dead letter" if selector.everything else f"{len(selector.ids)} dead letter(s)"
    print(f"Delete {what} for good? [y/N] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")
