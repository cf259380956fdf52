"""Running a verb that talks to RabbitMQ: its connection, its client, and every error as one
line on stderr with the right exit code (used by submit, results, status and dlq)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiormq

from consumer.cli.common import EXIT_BROKER, EXIT_FAILURE, EXIT_USAGE, CliError
from consumer.cli.connect import connect
from consumer.client import ClientError, ConnectionLost, ExecutionClient
from consumer.client.command_file import CommandFileError
from consumer.config import DaggerAdapterConfig, topology_for
from schemas import InvalidMessage


def run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """``asyncio.run(main())`` with the client's and the broker's errors turned into ``CliError``."""
    try:
        return asyncio.run(main())
    except (CommandFileError, InvalidMessage) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except ConnectionLost as exc:
        raise CliError(str(exc), EXIT_BROKER) from None
    except ClientError as exc:
        raise CliError(str(exc), EXIT_FAILURE) from None
    except (aiormq.exceptions.AMQPError, ConnectionError) as exc:
        raise CliError(f"lost the connection to RabbitMQ: {exc or type(exc).__name__}", EXIT_BROKER) from None
    except aiormq.exceptions.ChannelInvalidStateError:  # a RuntimeError: a channel closed under us
        raise CliError("lost the connection to RabbitMQ", EXIT_BROKER) from None


@contextlib.asynccontextmanager
async def client_for(config: DaggerAdapterConfig) -> AsyncIterator[ExecutionClient]:
    """A started ``ExecutionClient`` on a fresh connection (closed on exit)."""
    async with connect(config.amqp_url) as connection:
        client = ExecutionClient(connection, topology_for(config))
        try:
            await client.start()
            yield client
        finally:
            await client.close()
