"""``dagger-adapter topology declare|show|migrate``."""

from __future__ import annotations

import argparse
import asyncio
import json

from consumer.cli.common import CliError, config_from
from consumer.cli.connect import connect
from consumer.config import topology_for
from topology import Topology
from topology.declaring import TopologyConflict, declare, migrate


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser("topology", help="declare or show the exchanges and queues")
    verbs = parser.add_subparsers(dest="topology_verb", metavar="ACTION", required=True)
    d = verbs.add_parser("declare", help="declare every exchange, queue and binding (safe to run twice)")
    d.set_defaults(handler=run_declare)
    s = verbs.add_parser("show", help="print the topology this configuration uses")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(handler=run_show)
    m = verbs.add_parser(
        "migrate",
        help="bring a topology declared by an older version up to date (stop the old workers first)",
    )
    m.set_defaults(handler=run_migrate)


def run_declare(args: argparse.Namespace) -> int:
    config = config_from(args)
    spec = topology_for(config)

    async def go() -> None:
        async with connect(config.amqp_url) as connection:
            try:
                await declare(connection, spec)
            except TopologyConflict as exc:
                raise CliError(str(exc)) from None

    asyncio.run(go())
    print(f"declared {len(spec.exchanges)} exchanges and {len(spec.queues)} queues with prefix {spec.prefix!r}")
    return 0


def run_migrate(args: argparse.Namespace) -> int:
    config = config_from(args)
    spec = topology_for(config)

    async def go() -> list[str]:
        async with connect(config.amqp_url) as connection:
            try:
                return await migrate(connection, spec)
            except TopologyConflict as exc:
                raise CliError(str(exc)) from None

    changes = asyncio.run(go())
    for change in changes:
        print(change)
    print(f"topology with prefix {spec.prefix!r} is up to date ({len(changes)} queue(s) migrated)")
    return 0


def describe(spec: Topology) -> dict[str, object]:
    return {
        "prefix": spec.prefix,
        "exchanges": [{"name": e.name, "type": e.kind, "purpose": e.purpose} for e in spec.exchanges],
        "queues": [
            {
                "name": q.name,
                "type": q.queue_type,
                "arguments": q.arguments,
                "bindings": [{"exchange": ex, "routing_key": key} for ex, key in q.bindings],
                "purpose": q.purpose,
            }
            for q in spec.queues
        ],
    }


def run_show(args: argparse.Namespace) -> int:
    spec = topology_for(config_from(args))
    info = describe(spec)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ex_table = Table(title="exchanges")
    for col in ("name", "type", "purpose"):
        ex_table.add_column(col)
    for e in spec.exchanges:
        ex_table.add_row(e.name, e.kind, e.purpose)
    q_table = Table(title="queues")
    for col in ("name", "type", "bound to", "arguments"):
        q_table.add_column(col)
    for q in spec.queues:
        args_text = ", ".join(f"{k}={v}" for k, v in q.arguments.items() if k != "x-queue-type")
        bound = ", ".join(f"{ex} [{key or '-'}]" for ex, key in q.bindings)
        q_table.add_row(q.name, q.queue_type, bound, args_text)
    console.print(ex_table)
    console.print(q_table)
    return 0
