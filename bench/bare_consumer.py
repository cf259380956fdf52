"""The baseline of the end-to-end benchmark: the least a hand-rolled consumer does with the same
broker and engine, roughly a Celery/Dramatiq-style task.

A bare aio-pika consumer (prefetch = concurrency, manual ack) decodes each command with
``json.loads``, applies its pipeline operations to a container of one shared
``dagger.Connection``, asks the engine for the same leaves as our pipeline runner (``sync``,
``exit_code``, ``stdout``, ``stderr``), publishes a JSON result with publisher confirms and acks.
None of our guarantees: no validation, ledger, lease, status events, heartbeats, retries, dead
letters, timeouts or circuit breaker.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import aio_pika
import dagger
from aio_pika.abc import AbstractConnection, AbstractExchange, AbstractIncomingMessage, AbstractQueue

from topology import Topology


class BareConsumer:
    def __init__(self, amqp_url: str, spec: Topology, prefetch: int) -> None:
        self.amqp_url = amqp_url
        self.spec = spec
        self.prefetch = prefetch
        self.settled = 0  # messages acked after their result was confirmed
        self._stack = contextlib.AsyncExitStack()
        self._client: dagger.Client | None = None
        self._connection: AbstractConnection | None = None
        self._results: AbstractExchange | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None

    async def start(self) -> None:
        # The same SDK settings as our engine connection, so the engine side is alike.
        config = dagger.Config(retry=None, log_output=None, timeout=dagger.Timeout(120, connect=10))
        self._client = await self._stack.enter_async_context(dagger.Connection(config))
        self._connection = await aio_pika.connect(self.amqp_url, timeout=10)
        self._stack.push_async_callback(self._connection.close)
        channel = await self._connection.channel()  # publisher confirms: aio-pika's default
        await channel.set_qos(prefetch_count=self.prefetch)
        self._results = await channel.get_exchange(self.spec.results_exchange, ensure=False)
        self._queue = await channel.get_queue(self.spec.tasks_queue, ensure=False)
        self._tag = await self._queue.consume(self._on_message)  # aiormq runs each in a task

    async def stop(self) -> None:
        if self._queue is not None and self._tag is not None:
            await self._queue.cancel(self._tag)
        self._tag = None
        await self._stack.aclose()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        command = json.loads(message.body)
        try:
            outcome: dict[str, Any] = {"success": True, "result": await self._run(command["parameters"]["pipeline"])}
        except Exception as exc:  # reported, so the benchmark sees it and the round still ends
            outcome = {"success": False, "error": f"{type(exc).__name__}: {exc}"}
        body = json.dumps({"task_id": command["task_id"], "execution_type": command["execution_type"], **outcome})
        assert self._results is not None
        await self._results.publish(
            aio_pika.Message(
                body.encode(), content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            ),
            self.spec.result_routing_key(command["execution_type"], "succeeded" if outcome["success"] else "failed"),
        )
        await message.ack()
        self.settled += 1

    async def _run(self, pipeline: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
        assert self._client is not None
        ctr = self._client.container()
        for operation in pipeline:
            ((name, args),) = operation.items()
            ctr = getattr(ctr, "from_" if name == "from" else name)(**args)
        ctr = await ctr.sync()
        return {"exit_code": await ctr.exit_code(), "stdout": await ctr.stdout(), "stderr": await ctr.stderr()}
