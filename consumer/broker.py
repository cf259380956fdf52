"""Opening the robust RabbitMQ connection that the worker and the CLI use, with failures
turned into one line a person can act on (never showing the password)."""

from __future__ import annotations

import aio_pika
import aiormq
from aio_pika.abc import AbstractRobustConnection

from consumer.config import redact_url


class BrokerUnavailable(ConnectionError):
    """RabbitMQ could not be reached, or refused us; ``str()`` is one line without secrets."""


async def connect_broker(
    url: str, *, timeout: float = 10.0, reconnect_interval: float = 5.0
) -> AbstractRobustConnection:
    """A robust connection (it reconnects by itself later); the *first* connect fails fast."""
    where = redact_url(url)
    try:
        return await aio_pika.connect_robust(
            url, timeout=timeout, fail_fast=True, reconnect_interval=reconnect_interval
        )
    except aiormq.exceptions.ProbableAuthenticationError:
        raise BrokerUnavailable(f"RabbitMQ at {where} refused the credentials") from None
    except aiormq.exceptions.InvalidFrameError:  # Connection.Close instead of OpenOk: the vhost
        raise BrokerUnavailable(
            f"RabbitMQ at {where} refused to open the connection: "
            "does the virtual host exist, and may this user use it?"
        ) from None
    except (ConnectionError, OSError, TimeoutError, aiormq.exceptions.AMQPConnectionError) as exc:
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {where}: {exc or type(exc).__name__}") from None
