"""Exchanges, queues, retry tiers and the dead-letter queue, declared from one place."""

from topology.declare import DeclaredTopology, TopologyConflict, declare, delete, queue_depths
from topology.spec import ExchangeSpec, QueueSpec, RetryTier, Topology

__all__ = [
    "DeclaredTopology",
    "ExchangeSpec",
    "QueueSpec",
    "RetryTier",
    "Topology",
    "TopologyConflict",
    "declare",
    "delete",
    "queue_depths",
]
