"""What the client raises, beyond aio-pika's own connection errors."""

from __future__ import annotations


class ClientError(Exception):
    """Base of the client's errors; ``str(error)`` is one line a person can act on."""


class TopologyMissing(ClientError):
    """An exchange or queue the client needs does not exist (nobody declared the topology)."""


class PublishFailed(ClientError):
    """The broker did not take a message: it could not route it (no queue bound, a
    ``mandatory`` return) or refused it (a negative confirm, e.g. the tasks queue is full)."""

    def __init__(self, message: str, *, task_id: str | None = None) -> None:
        super().__init__(message)
        self.task_id = task_id


class DeadLetterNotFound(ClientError):
    """No message in the dead-letter queue has one of the given ids."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"no dead letter with id {', '.join(ids)}")
        self.ids = ids


class ConnectionLost(ClientError):
    """The connection to RabbitMQ is down: a publish was not sent, or a call waiting for its
    result lost its reply queue with the connection (the reply may never come; the task may
    still run). A robust connection reconnects by itself; the client is usable again then."""
