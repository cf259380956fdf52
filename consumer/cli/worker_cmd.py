"""`dagger-adapter worker`: consume execution commands until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal

import msgspec

from consumer.cli.common import EXIT_USAGE, CliError, config_from
from consumer.config import DaggerAdapterConfig
from consumer.logs import configure_logging
from topology.declaring import TopologyConflict

GC_YOUNG_THRESHOLD = 10_000


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "worker",
        help="consume execution commands and run them on Dagger (until SIGTERM/SIGINT)",
        description="Consume execution commands from RabbitMQ and run them as Dagger pipelines. "
        "On SIGTERM or SIGINT: stop taking commands, let running ones finish within "
        "drain_timeout_seconds, requeue the rest, exit 0.",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="executions in flight at once (overrides max_concurrent_executions)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise CliError("--concurrency must be at least 1", EXIT_USAGE)
        config = msgspec.structs.replace(config, max_concurrent_executions=args.concurrency)
    configure_logging(config.log_level, worker_id=config.worker_id)
    # A worker allocates many short-lived objects per command (messages, requests, futures):
    # collecting the youngest generation every 700 allocations (the default) spent about a
    # tenth of a busy worker's time; most of them are gone by a larger threshold anyway.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    return asyncio.run(_serve(config))


async def _serve(config: DaggerAdapterConfig) -> int:
    from consumer.worker import StartupFailed, Worker  # the worker's imports are heavy: only here

    worker = Worker(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    try:
        await worker.run()
    except (StartupFailed, TopologyConflict) as exc:
        raise CliError(str(exc)) from None
    return 0
