"""``DaggerAdapter``: one ``ExecutionCommand`` in, one ``ExecutionResult`` out.

An execution goes: parameters validated -> plan (workflow loaded, paths checked) -> cache
lookup -> attempts (each: a concurrency slot, a deadline, the circuit breaker, the engine
connection) with in-process retries of transient failures -> result (cached on success).
Failures never raise: they come back as ``success=False`` with an ``error_category``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from consumer.breaker import EngineCircuitBreaker
from consumer.cache import CacheManager, cache_key, directory_digest, file_digest
from consumer.config import DaggerAdapterConfig, config_directories
from consumer.engine import DaggerEngine, EngineSession, SessionKey
from consumer.errors import ExecutionFailure, classify
from consumer.execution import Plan, plan_for
from consumer.execution.context import ProgressCallback, Redactor, RunContext, registry_logins
from consumer.interface import AgentAdapter, AgentCapability, AgentStatus
from consumer.paths import PathRules, worker_code_paths
from consumer.retry import RetryHandler, RetryPolicy
from consumer.version import package_version
from schemas import (
    ErrorCategory,
    ExecutionCommand,
    ExecutionParameters,
    ExecutionResult,
    ExecutionType,
    InvalidMessage,
    parse_parameters,
    utcnow,
)

log = logging.getLogger("dagger_adapter.adapter")

# Resolving a command's image tags to digests (a registry round trip each) before the cache
# lookup; past this the command runs uncached rather than wait on a slow registry or engine.
RESOLVE_TIMEOUT_SECONDS = 60.0


class DaggerAdapter(AgentAdapter):
    def __init__(self, config: DaggerAdapterConfig | None = None) -> None:
        self.config = config or DaggerAdapterConfig()
        cfg = self.config
        self.retry_policy = RetryPolicy(
            max_retries=cfg.max_retries, backoff_factor=cfg.retry_backoff_factor, jitter=cfg.retry_jitter
        )
        self._retry = RetryHandler(self.retry_policy)
        self._breaker = EngineCircuitBreaker(cfg.breaker_failure_threshold, cfg.breaker_reset_seconds)
        self._engine = DaggerEngine(
            connect_timeout=cfg.engine_connect_timeout_seconds,
            execute_timeout=cfg.timeout_seconds,
            # An execution has a request or two open at once (workflow steps run concurrently).
            max_connections=max(100, 2 * cfg.max_concurrent_executions),
        )
        self._cache = CacheManager(
            url=cfg.valkey_url,
            data_directory=cfg.cache_directory,
            ttl_seconds=cfg.cache_ttl_seconds,
            enabled=cfg.caching_enabled,
        )
        self._rules = PathRules(
            volume_roots=cfg.allowed_volume_roots,
            workflow_directory=cfg.workflow_directory,
            protected=[cfg.cache_directory],
            output_roots=cfg.allowed_output_roots,
            write_protected=worker_code_paths(),
            config_directories=config_directories(),
        )
        self._slots = asyncio.Semaphore(cfg.max_concurrent_executions)
        self._load = 0
        self._initialized = False
        self._closed = False
        self._init_lock = asyncio.Lock()
        self.version = package_version()

    # --- lifecycle -------------------------------------------------------------------

    async def initialize(self) -> None:
        """Start the cache (the embedded Valkey when no ``valkey_url``) and connect to the
        engine. An unreachable engine is not fatal: executions reconnect (and fail as
        transient until it is back)."""
        async with self._init_lock:
            if self._initialized:
                return
            await self._cache.start()
            if not self.config.allowed_modules:
                log.info("allowed_modules is empty: module calls are refused")
            if self.config.allowed_output_roots:
                log.info("host writes (exports, writable volumes) allowed under %s", self._rules.output_roots)
            else:
                log.info(
                    "allowed_output_roots is not set: commands cannot write to this host (no exports, no writable volumes)"
                )
            if not self.config.allowed_volume_roots:
                log.warning(
                    "allowed_volume_roots is not set: commands may mount host paths under the working directory %s",
                    self._rules.volume_roots[0],
                )
            try:
                # Bounded: without an engine session the SDK provisions one (CLI start, maybe a
                # download), and start-up must not hang on that.
                async with asyncio.timeout(3 * self.config.engine_connect_timeout_seconds):
                    await self._engine.connect()
            except Exception as exc:
                why = (
                    "no session within the connect timeout" if isinstance(exc, TimeoutError) else classify(exc).message
                )
                log.warning("Dagger engine not reachable at start-up (%s); will retry per execution", why)
            self._initialized = True
            self._closed = False

    async def close(self) -> None:
        self._closed = True
        await self._engine.close()
        await self._cache.close()
        self._initialized = False

    # --- what the worker and the CLI read ------------------------------------------

    @property
    def current_load(self) -> int:
        return self._load

    @property
    def circuit_state(self) -> str:
        return self._breaker.state

    @property
    def valkey_url(self) -> str | None:
        """The Valkey actually in use (the embedded one included), after ``initialize``."""
        return self._cache.url

    async def revive_embedded_valkey(self) -> bool:
        """Start the host's embedded Valkey again if it died (see ``CacheManager.revive_embedded``)."""
        return await self._cache.revive_embedded()

    def add_circuit_listener(self, callback: Callable[[str], None]) -> None:
        self._breaker.add_listener(callback)

    def add_engine_request_listener(self, callback: Callable[[float, int], None]) -> None:
        """``callback(seconds, http_status)`` after each request to the engine (connections opened from now on)."""
        self._engine.add_request_listener(callback)

    def get_status(self) -> AgentStatus:
        circuit = self._breaker.state
        return AgentStatus(
            ready=self._initialized and not self._closed and circuit != "open",
            current_load=self._load,
            capacity=self.config.max_concurrent_executions,
            circuit=circuit,
            engine_connected=self._engine.connected,
            cache_available=self._cache.available,
            version=self.version,
        )

    def get_capabilities(self) -> list[AgentCapability]:
        return [
            AgentCapability(
                execution_type=ExecutionType.CONTAINERIZED_WORKFLOW,
                description="Named steps in containers: a workflow file from the workflow directory, an "
                "inline workflow, or a single command; inputs, environment, volumes, outputs.",
                features=("workflow_file", "inline_workflow", "single_command", "volumes", "outputs", "secrets"),
            ),
            AgentCapability(
                execution_type=ExecutionType.DAGGER_PIPELINE,
                description="A chain of Dagger container operations given as data, or a Dagger module function call.",
                features=("container_chain", "module_function", "host_directories", "cache_volumes", "secrets"),
            ),
        ]

    async def probe(self) -> bool:
        """A cheap engine round trip through the circuit breaker (closes a half-open one)."""
        try:
            await self._breaker.call(self._ping)
            return True
        except ExecutionFailure:
            return False

    async def _ping(self) -> None:
        # Any failure of the probe is an engine failure: a probe that times out must not be
        # taken for a slow step (which the breaker ignores) and close the circuit.
        limit = self.config.engine_connect_timeout_seconds
        try:
            async with asyncio.timeout(limit), self._engine.session() as session:
                try:
                    await session.client.version()
                except BaseException:
                    session.discard()
                    raise
        except TimeoutError:
            raise ExecutionFailure(
                ErrorCategory.TRANSIENT, f"the engine did not answer a probe within {limit:g}s"
            ) from None
        except Exception as exc:
            raise ExecutionFailure(ErrorCategory.TRANSIENT, classify(exc).message) from exc

    # --- execution -------------------------------------------------------------------

    async def execute(
        self,
        command: ExecutionCommand,
        *,
        attempt: int = 1,
        in_process_retries: bool = True,
        on_progress: ProgressCallback | None = None,
        replay_id: str | None = None,
    ) -> ExecutionResult:
        """Run one command. ``attempt`` is the number of this attempt (the worker counts
        redeliveries); with ``in_process_retries=False`` exactly one attempt is made. A
        ``replay_id`` (an operator's replay), an attempt after the first, or ``cache: false``
        make the engine run everything again instead of answering from its own cache."""
        if not self._initialized:
            await self.initialize()
        self._load += 1
        try:
            rerun = replay_id is not None
            return await self._execute(command, attempt, in_process_retries, on_progress, rerun)
        finally:
            self._load -= 1

    async def _execute(
        self,
        command: ExecutionCommand,
        attempt: int,
        in_process_retries: bool,
        on_progress: ProgressCallback | None,
        rerun: bool,
    ) -> ExecutionResult:
        clock = _Clock()
        try:
            execution_type = ExecutionType(command.execution_type)
            params = parse_parameters(execution_type, command.parameters)
        except (InvalidMessage, ValueError) as exc:
            failure = classify(exc if isinstance(exc, InvalidMessage) else InvalidMessage(str(exc)))
            return self._failed(command, None, failure, attempt, clock)

        redact = Redactor(_secret_values(params, self.config))
        try:
            plan = await asyncio.to_thread(
                functools.partial(plan_for, params, self._rules, allowed_modules=self.config.allowed_modules)
            )
        except Exception as exc:
            return self._failed(command, execution_type, classify(exc), attempt, clock, redact)

        run = _Run(command=command, params=params, plan=plan, redact=redact, session_key=_session_key(params, plan))
        key = await self._cache_key(execution_type, run)
        if key is not None:
            hit = await self._cache.get(key)
            if hit is not None:
                log.info("task %s: cache hit", command.task_id)
                return msgspec.structs.replace(
                    hit,
                    task_id=command.task_id,
                    cached=True,
                    attempts=attempt,
                    worker_id=self.config.worker_id,
                    execution_type=execution_type,
                    **clock.stamps(),
                )

        timeout = self._timeout_for(command)
        partial: dict[str, Any] = {}

        async def one_attempt(number: int) -> dict[str, Any]:
            partial.clear()
            # Anything but a first, cached run must really run again: the engine's own cache
            # would otherwise answer a replay, a retry or `cache: false` with the earlier run.
            fresh = rerun or number > 1 or not params.cache
            nonce = uuid.uuid4().hex if fresh else None
            async with self._slots:
                try:
                    async with asyncio.timeout(timeout):
                        return await self._breaker.call(self._run_attempt, run, partial, on_progress, nonce)
                except TimeoutError:
                    failure = ExecutionFailure(
                        ErrorCategory.TIMEOUT,
                        f"the execution ran past its timeout of {timeout:g}s",
                        partial=dict(partial),
                    )
                except ExecutionFailure as timed_out:
                    if timed_out.category is not ErrorCategory.TIMEOUT:
                        raise
                    failure = timed_out
            raise await self._after_timeout(failure)

        try:
            value, attempts = await self._retry.run(
                one_attempt,
                first_attempt=attempt,
                enabled=in_process_retries and params.enable_retry,
            )
        except ExecutionFailure as failure:
            return self._failed(command, execution_type, failure, failure.attempts, clock, redact)

        result = ExecutionResult(
            task_id=command.task_id,
            success=True,
            result=value,
            attempts=attempts,
            worker_id=self.config.worker_id,
            execution_type=execution_type,
            **clock.stamps(),
        )
        log.info("task %s: succeeded in %d ms (attempt %d)", command.task_id, result.duration_ms, attempts)
        if key is not None:
            await self._cache.put(key, result)
        return result

    def _context(
        self, session: EngineSession, run: _Run, on_progress: ProgressCallback | None, nonce: str | None
    ) -> RunContext:
        return RunContext(
            session=session,
            rules=self._rules,
            task_id=run.command.task_id,
            registry=self.config.container_registry,
            secrets=run.params.secrets,
            logins=registry_logins(
                self.config.container_registry, run.params.registry_auth, self.config.container_credentials
            ),
            redact=run.redact,
            on_progress=on_progress,
            run_nonce=nonce,
            pinned_images=dict(run.pinned_images),
        )

    async def _run_attempt(
        self, run: _Run, partial: dict[str, Any], on_progress: ProgressCallback | None, nonce: str | None
    ) -> dict[str, Any]:
        try:
            async with self._engine.session(run.session_key) as session:
                ctx = self._context(session, run, on_progress, nonce)
                try:
                    await run.plan.run(ctx, partial)
                except Exception as exc:
                    failure = classify(exc)
                    if failure.category is ErrorCategory.TRANSIENT and not failure.registry:
                        session.discard()  # a broken connection is not reused
                    raise
                return dict(partial)
        except Exception as exc:
            failure = classify(exc)
            # Redacted here: the retry handler logs the message before the result is built.
            raise ExecutionFailure(
                failure.category,
                run.redact.clip(failure.message),
                partial=dict(partial),
                circuit_open=failure.circuit_open,
                registry=failure.registry,
            ) from exc

    async def _after_timeout(self, failure: ExecutionFailure) -> ExecutionFailure:
        """A timeout is a slow step -- or a hung engine. Which one: a probe must answer within
        the connect timeout; if it does not, the engine counts as failed for the breaker."""
        if await self._engine_answers():
            return failure
        await self._breaker.record_engine_failure("the engine did not answer a probe after a timeout")
        return ExecutionFailure(
            failure.category,
            f"{failure.message} (the engine did not answer a probe either: it counts as an engine failure)",
            partial=failure.partial,
        )

    async def _engine_answers(self) -> bool:
        try:
            async with asyncio.timeout(self.config.engine_connect_timeout_seconds), self._engine.session() as session:
                try:
                    await session.client.version()
                except BaseException:
                    session.discard()
                    raise
            return True
        except Exception:
            return False

    def _timeout_for(self, command: ExecutionCommand) -> float:
        # The worker's timeout_seconds is also the SDK's execute timeout on the shared
        # connection, so it is the ceiling: a command may ask for less, not more.
        limit = self.config.timeout_seconds
        return min(command.timeout_seconds, limit) if command.timeout_seconds else limit

    async def _cache_key(self, execution_type: ExecutionType, run: _Run) -> str | None:
        # A run that writes to the host (writable volumes, exports) is not cached: a stored
        # result cannot redo the write (say, of an output the user deleted to get it again).
        # Nor is a call of a module whose ref may move (a branch or a tag, not a commit).
        params, plan = run.params, run.plan
        if not (params.cache and self._cache.in_use) or plan.writes_host or not plan.cacheable:
            return None
        if self._breaker.state == "open":  # the run fails fast anyway; do not touch the engine
            return None
        # What only the engine knows: the digest each image tag points at *now* (a moved tag
        # is a new key), and the host paths a module call's arguments name.
        try:
            async with (
                asyncio.timeout(min(self._timeout_for(run.command), RESOLVE_TIMEOUT_SECONDS)),
                self._engine.session(run.session_key) as session,
            ):
                ctx = self._context(session, run, None, None)
                resolved = await plan.resolve(ctx)
                run.pinned_images = dict(ctx.pinned_images)
        except Exception as exc:  # the run will meet the same problem and say what it is
            log.warning(
                "task %s: could not resolve images for the cache key (%s); running uncached",
                run.command.task_id,
                run.redact(classify(exc).message),
            )
            return None
        inputs = [*plan.host_inputs, *resolved.get("module_inputs", [])]

        def compute() -> str:
            return cache_key(
                execution_type,
                params,
                container_registry=self.config.container_registry,
                workflow_source=plan.workflow_source,
                input_digests={str(p): directory_digest(p) if p.is_dir() else file_digest(p) for p in inputs},
                secrets=params.secrets,
                credentials=(params.registry_auth, self.config.container_credentials),
                images=resolved.get("images", {}),
            )

        try:
            # Hashing host inputs reads files: off the event loop. Without any, the key is a few
            # microseconds of hashing, less than the hop to a thread.
            return await asyncio.to_thread(compute) if inputs else compute()
        except OSError as exc:  # an input vanished meanwhile: run uncached, the run will say why
            log.warning("could not compute the cache key (%s); running uncached", type(exc).__name__)
            return None

    def _failed(
        self,
        command: ExecutionCommand,
        execution_type: ExecutionType | None,
        failure: ExecutionFailure,
        attempts: int,
        clock: _Clock,
        redact: Redactor | None = None,
    ) -> ExecutionResult:
        redact = redact or Redactor(())
        detail: Any = redact.scrub(failure.partial) if failure.partial else None
        if failure.circuit_open:
            detail = {**(detail or {}), "circuit": "open"}
        message = redact.clip(failure.message)
        log.warning(
            "task %s: failed (%s) after %d attempt(s): %s", command.task_id, failure.category.value, attempts, message
        )
        return ExecutionResult(
            task_id=command.task_id,
            success=False,
            result=detail,
            error=message,
            error_category=failure.category,
            attempts=max(attempts, 1),
            worker_id=self.config.worker_id,
            execution_type=execution_type,
            **clock.stamps(),
        )


@dataclass(kw_only=True)
class _Run:
    """One execution's fixed parts, shared by its attempts."""

    command: ExecutionCommand
    params: ExecutionParameters
    plan: Plan
    redact: Redactor
    session_key: SessionKey
    pinned_images: dict[str, str] = field(default_factory=dict)


def _session_key(params: ExecutionParameters, plan: Plan) -> SessionKey:
    """Tasks share an engine session only with tasks holding the same registry credentials
    (a real engine keeps them per session); a module call gets its module's own session."""
    credentials = ""
    if params.registry_auth is not None:
        cred = params.registry_auth
        material = "\0".join((cred.address or "", cred.username or "", cred.secret))
        credentials = hashlib.sha256(material.encode()).hexdigest()
    module = getattr(plan, "module_ref", None) or ""
    return SessionKey(credentials=credentials, module=module)


class _Clock:
    def __init__(self) -> None:
        self.started_at = utcnow()
        self._t0 = time.monotonic()

    def stamps(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "finished_at": utcnow(),
            "duration_ms": int((time.monotonic() - self._t0) * 1000),
        }


def _secret_values(params: ExecutionParameters, config: DaggerAdapterConfig) -> list[str]:
    values = list(params.secrets.values())
    for cred in (params.registry_auth, config.container_credentials):
        if cred is not None:
            values.append(cred.secret)
    return values
