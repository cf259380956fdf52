"""The Python client of Dagger Adapter: publish commands, await results, watch events, and
operate the dead-letter queue. Uses the ``schemas`` Structs, like the worker."""

from consumer.client.dead_letters import DeadLetter, DeadLetterQueue, Replayed, ReplayIncomplete, Selector
from consumer.client.errors import ClientError, ConnectionLost, DeadLetterNotFound, PublishFailed, TopologyMissing
from consumer.client.execution_client import ExecutionClient
from consumer.client.result_store import ResultStore
from consumer.client.subscriptions import Subscription

__all__ = [
    "ClientError",
    "ConnectionLost",
    "DeadLetter",
    "DeadLetterNotFound",
    "DeadLetterQueue",
    "ExecutionClient",
    "PublishFailed",
    "ReplayIncomplete",
    "Replayed",
    "ResultStore",
    "Selector",
    "Subscription",
    "TopologyMissing",
]
