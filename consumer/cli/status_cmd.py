"""``dagger-adapter status``: live workers (from their heartbeats) and queue depths."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aio_pika.abc import AbstractConnection
from rich.console import Group
from rich.live import Live
from rich.table import Table

from consumer.cli.arg_types import positive_seconds
from consumer.cli.broker_session import client_for, run_async
from consumer.cli.common import EXIT_OK, config_from
from consumer.cli.console import ago, notice, plain, print_json, stdout_console
from consumer.client import Subscription
from schemas import StatusEvent, WorkerHeartbeat
from topology import Topology
from topology.declaring import queue_depths

STALE_AFTER_INTERVALS = 3  # a worker unheard for this many heartbeat intervals is shown as stale


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "status",
        help="live workers and queue depths",
        description=(
            "Workers are known from their heartbeats, so status listens for one heartbeat interval "
            "(configuration heartbeat_interval_seconds, plus 1 s; or --listen S) and then prints every "
            "worker it heard and the depth of each queue. --watch keeps listening and refreshes."
        ),
    )
    parser.add_argument("-w", "--watch", action="store_true", help="refresh until Ctrl-C")
    parser.add_argument(
        "--interval", type=positive_seconds, default=2.0, metavar="S", help="with --watch: refresh every S s"
    )
    parser.add_argument("--listen", type=positive_seconds, metavar="S", help="listen for heartbeats for S seconds")
    parser.add_argument("--json", action="store_true", help="machine-readable output (one document per refresh)")
    parser.set_defaults(handler=run)


@dataclass
class SeenWorker:
    heartbeat: WorkerHeartbeat
    last_seen: datetime


class Workers:
    """Every worker heard so far, by id, with when it was last heard (local clock)."""

    def __init__(self, heartbeat_interval: float) -> None:
        self.stale_after = heartbeat_interval * STALE_AFTER_INTERVALS
        self.seen: dict[str, SeenWorker] = {}

    async def listen(self, events: Subscription[StatusEvent | WorkerHeartbeat]) -> None:
        async for event in events:
            if isinstance(event, WorkerHeartbeat):
                self.seen[event.worker_id] = SeenWorker(event, datetime.now(UTC))

    def is_stale(self, worker: SeenWorker, now: datetime) -> bool:
        return (now - worker.last_seen).total_seconds() > self.stale_after

    def rows(self, now: datetime) -> list[dict[str, Any]]:
        return [
            {
                "worker_id": w.heartbeat.worker_id,
                "ready": w.heartbeat.ready,
                "current_load": w.heartbeat.current_load,
                "capacity": w.heartbeat.capacity,
                "circuit": w.heartbeat.circuit,
                "version": w.heartbeat.version,
                "last_seen": w.last_seen.isoformat(),
                "seconds_since_seen": round((now - w.last_seen).total_seconds(), 1),
                "stale": self.is_stale(w, now),
            }
            for w in sorted(self.seen.values(), key=lambda w: w.heartbeat.worker_id)
        ]


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    listen = args.listen or config.heartbeat_interval_seconds + 1.0

    async def go() -> int:
        async with client_for(config) as client:
            workers = Workers(config.heartbeat_interval_seconds)
            async with client.status(tasks=False) as events:
                listener = asyncio.create_task(workers.listen(events))
                try:
                    notice(f"listening for worker heartbeats on {events.exchange} ({listen:g} s)")
                    if args.watch:
                        await watch(client.connection, client.topology, workers, args)
                    else:
                        await asyncio.sleep(listen)  # how long a heartbeat can take to come: the point of status
                        await show(client.connection, client.topology, workers, args.json)
                finally:
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await listener
        return EXIT_OK

    try:
        return run_async(go)
    except KeyboardInterrupt:
        return EXIT_OK  # Ctrl-C is how --watch ends


async def show(connection: AbstractConnection, spec: Topology, workers: Workers, as_json: bool) -> None:
    depths = await queue_depths(connection, spec)
    now = datetime.now(UTC)
    if as_json:
        print_json({"workers": workers.rows(now), "queues": depths})
    else:
        stdout_console().print(render(workers, depths, now))


async def watch(connection: AbstractConnection, spec: Topology, workers: Workers, args: argparse.Namespace) -> None:
    if args.json:
        while True:
            print_json({"workers": workers.rows(datetime.now(UTC)), "queues": await queue_depths(connection, spec)})
            await asyncio.sleep(args.interval)
    console = stdout_console()
    if not console.is_terminal:  # no screen to redraw: one snapshot after the other
        while True:
            console.print(render(workers, await queue_depths(connection, spec), datetime.now(UTC)))
            console.file.flush()
            await asyncio.sleep(args.interval)
    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(render(workers, await queue_depths(connection, spec), datetime.now(UTC)), refresh=True)
            await asyncio.sleep(args.interval)


def render(workers: Workers, depths: dict[str, int | None], now: datetime) -> Group:
    table = Table(title="workers")
    for column in ("worker", "ready", "load", "circuit", "version", "last seen"):
        table.add_column(column)
    for worker in sorted(workers.seen.values(), key=lambda w: w.heartbeat.worker_id):
        beat = worker.heartbeat
        stale = workers.is_stale(worker, now)
        ready = "[dim]stale[/]" if stale else ("[green]yes[/]" if beat.ready else "[yellow]no[/]")
        circuit = plain(beat.circuit or "-")
        if beat.circuit not in ("closed", None):
            circuit.stylize("red")
        table.add_row(
            plain(beat.worker_id),  # heartbeats are messages too: their text is never markup
            ready,
            f"{beat.current_load}/{beat.capacity}",
            circuit,
            plain(beat.version or "-"),
            ago(worker.last_seen, now),
        )
    if not workers.seen:
        table.caption = "no heartbeat heard: no worker running?"
    queues = Table(title="queues")
    queues.add_column("queue")
    queues.add_column("ready messages", justify="right")
    for name, depth in depths.items():
        queues.add_row(name, "[dim]missing[/]" if depth is None else str(depth))
    return Group(table, queues)
