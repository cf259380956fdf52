"""Dagger Adapter: run execution commands as Dagger pipelines.

In-process API (the original design's)::

    adapter = DaggerAdapter(DaggerAdapterConfig(workflow_directory="./workflows"))
    await adapter.initialize()
    result = await adapter.execute(AgentExecutionConfig(...))

Names are imported on first use: the dagger SDK takes about a second to import, and CLI verbs
that never run Dagger (submit, status, dlq, topology) should not pay for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consumer.adapter import DaggerAdapter
    from consumer.breaker import EngineCircuitBreaker
    from consumer.cache import CacheManager
    from consumer.config import DaggerAdapterConfig, load_config
    from consumer.errors import ExecutionFailure
    from consumer.interface import AgentAdapter, AgentCapability, AgentStatus
    from consumer.retry import RetryHandler, RetryPolicy

_WHERE = {
    "DaggerAdapter": "consumer.adapter",
    "EngineCircuitBreaker": "consumer.breaker",
    "CacheManager": "consumer.cache",
    "DaggerAdapterConfig": "consumer.config",
    "load_config": "consumer.config",
    "ExecutionFailure": "consumer.errors",
    "AgentAdapter": "consumer.interface",
    "AgentCapability": "consumer.interface",
    "AgentStatus": "consumer.interface",
    "RetryHandler": "consumer.retry",
    "RetryPolicy": "consumer.retry",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'consumer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "AgentAdapter",
    "AgentCapability",
    "AgentStatus",
    "CacheManager",
    "DaggerAdapter",
    "DaggerAdapterConfig",
    "EngineCircuitBreaker",
    "ExecutionFailure",
    "RetryHandler",
    "RetryPolicy",
    "load_config",
]
