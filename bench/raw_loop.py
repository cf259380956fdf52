"""``python -m bench.raw_loop AMQP_URL PREFIX PREFETCH``: the baseline every scenario is a ratio
against: the least a consumer on the same broker does with the same guarantees of delivery.

A raw aio-pika loop on the same quorum tasks queue: prefetch ``PREFETCH``, manual (late) ack, one
persistent result per command published with publisher confirms, then the ack. No validation,
no engine, no ledger, no status events. Prints ``ready`` once consuming; SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from topology import Topology


async def main(url: str, prefix: str, prefetch: int) -> None:
    spec = Topology(prefix=prefix)
    connection = await aio_pika.connect(url)
    channel = await connection.channel()  # publisher confirms: aio-pika's default
    await channel.set_qos(prefetch_count=prefetch)
    results = await channel.get_exchange(spec.results_exchange, ensure=False)
    queue = await channel.get_queue(spec.tasks_queue, ensure=False)

    async def on_message(message: AbstractIncomingMessage) -> None:
        command = json.loads(message.body)
        body = json.dumps({"task_id": command["task_id"], "success": True, "result": {"exit_code": 0}}).encode()
        await results.publish(
            aio_pika.Message(body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            spec.result_routing_key(command["execution_type"], "succeeded"),
        )
        await message.ack()

    await queue.consume(on_message)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await connection.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
