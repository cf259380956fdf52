"""Opening the robust RabbitMQ connection that the worker and the CLI use, with failures
turned into one line a person can act on (never showing the password)."""

from __future__ import annotations

import aio_pika
import aiormq
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from consumer.config import redact_url

# Frames a connection may have queued for its writer (see ``connect_broker``).
WRITE_QUEUE_FRAMES = 4096


class BrokerUnavailable(ConnectionError):
    """RabbitMQ could not be reached, or refused us; ``str()`` is one line without secrets."""


async def connect_broker(
    url: str, *, timeout: float = 10.0, reconnect_interval: float = 5.0
) -> AbstractRobustConnection:
    """A robust connection (it reconnects by itself later); the *first* connect fails fast."""
    where = redact_url(url)
    # aiormq's writer queue holds FRAME_BUFFER_SIZE frames (10) for the whole connection, and a
    # blocked publisher needs an event-loop turn to put the next one in: on a busy loop (a
    # thousand executions) that caps everything the worker sends (results, acks, heartbeats) at
    # ten frames a turn. A queued frame costs its bytes; a full queue still pushes back.
    aiormq.Connection.FRAME_BUFFER_SIZE = max(aiormq.Connection.FRAME_BUFFER_SIZE, WRITE_QUEUE_FRAMES)
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


async def publish_without_drain(
    exchange: AbstractExchange,
    message: aio_pika.Message,
    routing_key: str,
    *,
    mandatory: bool = False,
    confirm_timeout: float | None = None,
) -> object:
    """``exchange.publish`` without waiting for the connection's writer to flush this frame.

    aio-pika's publish holds the channel's lock until the frame has been written out, which
    takes the event loop a few turns: under load (a thousand handlers on one busy loop) a
    channel then publishes a handful of messages per second, and status events time out in the
    queue. Here the lock is held only to enqueue the frame; what a confirming channel promises
    still comes from the broker's confirm (``confirm_timeout`` bounds the wait for it).
    Returns what ``exchange.publish`` returns: the broker's ack, ``None`` (no confirms), or the
    returned message when a ``mandatory`` message found no queue."""
    if not isinstance(exchange, aio_pika.Exchange):  # its channel is not part of AbstractExchange
        raise RuntimeError(f"not an aio-pika exchange: {exchange!r}")
    if exchange.channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{exchange.channel!r} closed")
    channel = await exchange.channel.get_underlay_channel()
    if not isinstance(channel, aiormq.Channel):  # ``wait`` is aiormq's, not part of its AbstractChannel
        raise RuntimeError(f"not an aiormq channel: {channel!r}")
    return await channel.basic_publish(
        message.body,
        exchange=exchange.name,
        routing_key=routing_key,
        properties=message.properties,
        mandatory=mandatory,
        timeout=confirm_timeout,
        wait=False,
    )
