"""``dagger-adapter health``: a container probe that reads the worker's health file."""

from __future__ import annotations

import argparse

from consumer.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliError, config_from
from consumer.health import Unhealthy, read_health_file


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "health",
        help="probe the local worker through its health file (for liveness/readiness probes)",
        description=(
            "Exit 0 when the worker's health file (configuration health_file) was rewritten recently, "
            "1 otherwise; with --ready, also require that the worker is consuming. Reaches no service."
        ),
    )
    parser.add_argument(
        "--max-age", type=float, metavar="S", help="oldest acceptable heartbeat (default: 3 heartbeat intervals)"
    )
    parser.add_argument("--ready", action="store_true", help="also require ready: consuming, circuit closed")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    if not config.health_file:
        raise CliError("no health_file configured (DAGGER_ADAPTER_HEALTH_FILE)", EXIT_USAGE)
    max_age = args.max_age if args.max_age is not None else 3 * config.heartbeat_interval_seconds
    try:
        health = read_health_file(config.health_file, max_age_seconds=max_age, require_ready=args.ready)
    except Unhealthy as exc:
        raise CliError(str(exc), EXIT_FAILURE) from None
    beat = health.heartbeat
    state = "ready" if beat.ready else "not ready"
    print(
        f"worker {beat.worker_id}: {state}, load {beat.current_load}/{beat.capacity}, "
        f"last heartbeat {health.age_seconds:.0f} s ago"
    )
    return EXIT_OK
