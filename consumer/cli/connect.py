"""Opening a broker connection for a CLI verb, with errors a person can act on."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractRobustConnection

from consumer.broker import BrokerUnavailable, connect_broker
from consumer.cli.common import EXIT_BROKER, EXIT_USAGE, CliError
from consumer.config import check_amqp_url


def quiet_amqp_logs() -> None:
    """aio-pika logs connection failures itself; the CLI reports them as one line instead."""
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.asynccontextmanager
async def connect(url: str, timeout: float = 10.0) -> AsyncIterator[AbstractRobustConnection]:
    quiet_amqp_logs()
    try:
        check_amqp_url(url)
    except ValueError as exc:
        raise CliError(f"amqp_url: {exc}", EXIT_USAGE) from None
    try:
        connection = await connect_broker(url, timeout=timeout)
    except BrokerUnavailable as exc:
        raise CliError(str(exc), EXIT_BROKER) from None
    try:
        yield connection
    finally:
        await connection.close()
