"""The in-process API of the original design: what every agent adapter offers."""

from __future__ import annotations

import abc

import msgspec

from schemas import AgentExecutionConfig, AgentExecutionResult, ExecutionType


class AgentCapability(msgspec.Struct, kw_only=True, frozen=True):
    """One kind of work an adapter can do."""

    execution_type: ExecutionType
    description: str
    features: tuple[str, ...] = ()


class AgentStatus(msgspec.Struct, kw_only=True):
    """An adapter's readiness and load (also what a worker heartbeat reports)."""

    ready: bool
    current_load: int
    capacity: int
    circuit: str = "closed"  # the engine circuit breaker: closed | open | half-open
    engine_connected: bool = False
    cache_available: bool = False
    version: str = ""


class AgentAdapter(abc.ABC):
    @abc.abstractmethod
    async def initialize(self) -> None:
        """Connect what the adapter needs (engine, cache). Safe to call once before execute."""

    @abc.abstractmethod
    async def execute(self, config: AgentExecutionConfig) -> AgentExecutionResult:
        """Run one task. Failures are returned as a result with ``success=False`` and an
        ``error_category``; only programming errors raise."""

    @abc.abstractmethod
    def get_capabilities(self) -> list[AgentCapability]: ...

    @abc.abstractmethod
    def get_status(self) -> AgentStatus: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Optional."""
