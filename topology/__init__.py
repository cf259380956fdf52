"""Exchanges, queues, retry tiers and the dead-letter queue, declared from one place.

``topology.spec`` names them (plain data, no AMQP); ``topology.declaring`` declares them on a
broker (aio-pika). Importing ``topology`` or ``topology.spec`` pulls in no AMQP code, so the
execution core can use the names; the declaring names below load ``topology.declaring`` on first use.
"""

import importlib
from typing import TYPE_CHECKING, Any

from topology.spec import ExchangeSpec, QueueSpec, RetryTier, Topology

if TYPE_CHECKING:
    from topology.declaring import DeclaredTopology, TopologyConflict, declare, delete, migrate, queue_depths

_DECLARING = frozenset({"DeclaredTopology", "TopologyConflict", "declare", "delete", "migrate", "queue_depths"})


def __getattr__(name: str) -> Any:
    if name in _DECLARING:
        return getattr(importlib.import_module("topology.declaring"), name)
    raise AttributeError(f"module 'topology' has no attribute {name!r}")


__all__ = [
    "DeclaredTopology",
    "ExchangeSpec",
    "QueueSpec",
    "RetryTier",
    "Topology",
    "TopologyConflict",
    "declare",
    "delete",
    "migrate",
    "queue_depths",
]
