"""`dagger-adapter results`."""

from __future__ import annotations

import argparse

from consumer.cli.common import die


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("results", help="(not yet implemented)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    die("'results' is not implemented yet")
