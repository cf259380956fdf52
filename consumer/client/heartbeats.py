"""The workers' recent heartbeats, read at once from the heartbeats stream.

Heartbeats are pub/sub events on the status exchange: a listener that starts now hears a worker only
at its next beat (up to one interval later). The topology also binds a stream to them, which keeps
the last minutes; reading it from a point in time answers "who was alive lately" immediately.

Where the history ends is marked exactly: before reading, we append a marker of our own to the
stream (publisher-confirmed), and read until it comes back. Everything a worker published before
the marker is in the stream before it, so nothing recent is missed and nothing waits on a timer.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelNotFoundEntity

from schemas import InvalidMessage, WorkerHeartbeat, decode
from topology import Topology

MARKER_TYPE = "dagger-adapter.heartbeats-marker"  # the AMQP ``type`` of a marker; not a heartbeat
PREFETCH = 512


async def recent_heartbeats(
    connection: AbstractConnection, spec: Topology, since: datetime, *, timeout: float = 5.0
) -> dict[str, WorkerHeartbeat] | None:
    """The latest heartbeat of each worker heard since ``since``, by worker id; ``None`` when the
    topology has no heartbeats stream (declared by an older version)."""
    channel = await connection.channel()
    try:
        try:
            stream = await channel.declare_queue(spec.heartbeats_queue, passive=True)
        except ChannelNotFoundEntity:
            return None
        await channel.set_qos(prefetch_count=PREFETCH)
        marker_id = uuid.uuid4().hex
        latest: dict[str, WorkerHeartbeat] = {}
        reached_the_marker = asyncio.Event()

        async def on_message(message: AbstractIncomingMessage) -> None:
            await message.ack()  # a stream consumer must ack to get more; nothing is removed
            if message.type == MARKER_TYPE:
                if message.message_id == marker_id:
                    reached_the_marker.set()
                return
            try:
                beat = decode(message.body, WorkerHeartbeat)
            except InvalidMessage:
                return
            if beat.at >= since:
                seen = latest.get(beat.worker_id)
                if seen is None or beat.at >= seen.at:
                    latest[beat.worker_id] = beat

        await channel.default_exchange.publish(
            aio_pika.Message(b"", type=MARKER_TYPE, message_id=marker_id),
            routing_key=spec.heartbeats_queue,
            mandatory=True,
        )
        # A timestamp offset starts at the stream chunk holding that second (older beats may come
        # too; ``since`` filters them). Whole seconds are its resolution: round down.
        await stream.consume(on_message, arguments={"x-stream-offset": since.replace(microsecond=0)})
        try:
            await asyncio.wait_for(reached_the_marker.wait(), timeout)
        except TimeoutError:
            pass  # what was read so far is still the truth about those workers
        return latest
    finally:
        if not channel.is_closed:
            await channel.close()
