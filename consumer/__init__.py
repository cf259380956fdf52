"""Dagger Adapter: run execution commands as Dagger pipelines.

In-process API (the original design's)::

    adapter = DaggerAdapter(DaggerAdapterConfig(workflow_directory="./workflows"))
    await adapter.initialize()
    result = await adapter.execute(AgentExecutionConfig(...))
"""

from consumer.adapter import DaggerAdapter
from consumer.breaker import EngineCircuitBreaker
from consumer.cache import CacheManager
from consumer.config import DaggerAdapterConfig, load_config
from consumer.errors import ExecutionFailure
from consumer.interface import AgentAdapter, AgentCapability, AgentStatus
from consumer.retry import RetryHandler, RetryPolicy

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
