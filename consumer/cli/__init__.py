"""``dagger-adapter``: the command line. Each verb lives in its own module and registers itself."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from consumer.cli import (
    console_cmd,
    dlq_cmd,
    health_cmd,
    results_cmd,
    run_cmd,
    schema_cmd,
    status_cmd,
    submit_cmd,
    topology_cmd,
    worker_cmd,
)
from consumer.cli.common import EXIT_USAGE, CliError, fail
from consumer.version import package_version, sdk_version

VERBS = (
    worker_cmd,
    submit_cmd,
    results_cmd,
    status_cmd,
    dlq_cmd,
    console_cmd,
    run_cmd,
    health_cmd,
    topology_cmd,
    schema_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dagger-adapter",
        description="Run execution commands from RabbitMQ as Dagger pipelines; publish, watch and operate them.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="TOML configuration file (environment DAGGER_ADAPTER_* overrides it)"
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {package_version()} (dagger-io {sdk_version()})",
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    for verb in VERBS:
        verb.register(sub)
    return parser


def _config_first(argv: Sequence[str]) -> list[str]:
    """Accept ``--config FILE`` anywhere on the line (``dagger-adapter worker --config x.toml``)."""
    rest: list[str] = []
    front: list[str] = []
    items = iter(argv)
    for item in items:
        if item == "--config":
            front += [item, next(items, "")]
        elif item.startswith("--config="):
            front.append(item)
        else:
            rest.append(item)
    return front + rest


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_config_first(sys.argv[1:] if argv is None else argv))  # exits 2 on usage errors
    try:
        return int(args.handler(args) or 0)
    except CliError as exc:
        return fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

__all__ = ["EXIT_USAGE", "build_parser", "main"]
