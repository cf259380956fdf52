"""``dagger-adapter console [--bind HOST:PORT]``: the operator console in the browser."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from consumer.cli.arg_types import positive_int, since
from consumer.cli.common import EXIT_OK, EXIT_USAGE, CliError, config_from
from consumer.cli.connect import quiet_amqp_logs
from consumer.cli.console import notice
from consumer.logs import configure_logging

DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_HISTORY = 10_000
SHUTDOWN_GRACE_SECONDS = 3


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "console",
        help="the operator console in the browser: fleet, live flow, tasks, dead letters, submit",
        description=(
            "Serve the web console. Bound to loopback by default; binding another address needs "
            "console_token (DAGGER_ADAPTER_CONSOLE_TOKEN), and then every request needs a token. "
            "Without console_operator_token (DAGGER_ADAPTER_CONSOLE_OPERATOR_TOKEN) the console is "
            "read-only; with it, whoever signs in with that token may submit, replay and purge. "
            "Tokens are never logged."
        ),
    )
    parser.add_argument(
        "--bind",
        type=bind_address,
        default=bind_address(DEFAULT_BIND),
        metavar="HOST:PORT",
        help=f"where to listen (default {DEFAULT_BIND}; port 0 picks a free one)",
    )
    parser.add_argument(
        "--examples",
        metavar="DIR",
        help="command files offered on the submit page (default: ./examples when it exists)",
    )
    parser.add_argument(
        "--since",
        type=since,
        default=timedelta(hours=1),
        metavar="WHEN",
        help="start with the results the results stream keeps since WHEN: 30m, 1h (default), 7d back, an ISO "
        "time, or 0s for none",
    )
    parser.add_argument(
        "--history",
        type=positive_int,
        default=DEFAULT_HISTORY,
        metavar="N",
        help=f"tasks remembered from what the console has seen (default {DEFAULT_HISTORY})",
    )
    parser.set_defaults(handler=run)


def bind_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT`` (loopback)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    try:
        import uvicorn

        from consumer.webconsole import create_app
        from consumer.webconsole.security import AccessError, is_loopback
    except ImportError as exc:
        raise CliError(
            f"the console needs its dependencies ({exc.name} is missing): pip install 'dagger-adapter[console]'",
            EXIT_USAGE,
        ) from None
    host, port = args.bind
    loopback = is_loopback(host)
    examples = Path(args.examples) if args.examples else Path("examples")
    if args.examples and not examples.is_dir():
        raise CliError(f"--examples {args.examples}: not a directory", EXIT_USAGE)
    try:
        backfill = args.since if isinstance(args.since, timedelta) else datetime.now(UTC) - args.since
        app = create_app(
            config,
            loopback=loopback,
            examples=examples if examples.is_dir() else None,
            history_size=args.history,
            backfill=max(backfill, timedelta(0)),
        )
    except AccessError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    configure_logging(config.log_level)
    quiet_amqp_logs()
    try:
        listening = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound_port = listening.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    mode = "operators may act after signing in" if config.console_operator_token else "read-only"
    access = "token required" if not loopback or config.console_token else "loopback only"
    notice(f"dagger-adapter console on http://{shown}:{bound_port}/ ({access}; {mode})")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,  # our JSON logs; uvicorn's own records go through them
            log_level=logging.WARNING,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
        )
    )
    # Open pages hold server-sent event streams; ending them at shutdown is expected, not an error.
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: not (server.should_exit and "without completing response" in record.getMessage())
    )
    try:
        asyncio.run(server.serve(sockets=[listening]))
    except KeyboardInterrupt:
        pass
    return EXIT_OK
