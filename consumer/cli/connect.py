"""Opening a broker connection for a CLI verb, with errors a person can act on."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection

from consumer.cli.common import EXIT_USAGE, CliError
from consumer.config import check_amqp_url, redact_url


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
        connection = await aio_pika.connect_robust(url, timeout=timeout, fail_fast=True)
    except aiormq.exceptions.ProbableAuthenticationError:
        raise CliError(f"RabbitMQ at {redact_url(url)} refused the credentials") from None
    except aiormq.exceptions.InvalidFrameError:  # Connection.Close instead of OpenOk: the vhost
        raise CliError(
            f"RabbitMQ at {redact_url(url)} refused to open the connection: "
            "does the virtual host exist, and may this user use it?"
        ) from None
    except (ConnectionError, OSError, TimeoutError, aiormq.exceptions.AMQPConnectionError) as exc:
        raise CliError(f"cannot reach RabbitMQ at {redact_url(url)}: {exc or type(exc).__name__}") from None
    try:
        yield connection
    finally:
        await connection.close()
